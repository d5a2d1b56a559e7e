"""Lattice export: one shard file per decode, read by the rescorer.

Format ``rescorer.token_lattices/1`` — a ``torch.save`` dict (``lattices.pt``):

- ``format``: ``"rescorer.token_lattices/1"``
- ``utterance_ids``: list[str], one per lattice, same order as ``lattices``
- ``lattices``: list of ``k2.Fsa.as_dict()`` (load with ``k2.Fsa.from_dict``); each a
  CTC lattice from HLG (top-sorted; state 0 start, last state final) with per-arc
  attributes: ``labels`` (CTC token ids incl. blank 0; -1 on the final arc),
  ``aux_labels`` (k2 RaggedTensor of word ids: 0, 1 or 2 words on an arc, ids into
  ``words``), ``tokens`` (token emitted on the arc, 0 if none), ``frames`` (int32, the
  lattice frame at which the arc is taken; every path takes one arc per frame; the
  final arc has frame T = number of lattice frames), ``am_scores`` (CTC log-prob, nats),
  ``lm_scores`` (graph score: LM log-prob in nats plus ``<unk>`` penalties); ``scores``
  = am_scores + lm_scores.
- ``frame_shift``: seconds per lattice frame (0.01 s fbank shift x subsampling 4 = 0.04)
- ``subsampling_factor``: 4
- ``words``: the word symbol table as a list, ``words[i]`` = symbol with id i
  (``words.txt`` of the lang dir: ``<eps>`` 0, ``<unk>`` 1, words, ``#0``, ``<s>``, ``</s>``)
- ``words_path``: where that ``words.txt`` was (informational)
- ``tokens``: the token list of rescorer.tokens (``<blk>``, ``|``, ``'``, a-z)

A word's time span comes from its tokens (rescorer.decoding.decode: start = frame of its
first letter, end = frame of its ``|`` + 1; seconds = frames x frame_shift). ``<unk>``
arcs are words outside the LM, spelled by the letter loop (the ``tokens`` on the path).

For the rescorer's word lattices (``rescorer.lattice.word_lattice``, spans and am/lm per
word arc), ``rescorer.decoding.decode.word_lattice_arcs(lattice, id2word)`` gives the
``(src, dst, word, start_frame, end_frame, am, lm)`` arcs and final scores that
``build_word_lattice(..., frame_shift=info["frame_shift"])`` takes (the decode CLI does
this with ``--word-lattices``).

``load_lattices`` checks the format, the attributes (a lattice without ``frames`` is an
error: no frame information), that word ids are inside the table and, when given, that
the table equals the caller's ``words.txt``; every error names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch

from rescorer.tokens import TOKENS

FORMAT = "rescorer.token_lattices/1"
REQUIRED_ATTRS = ("frames", "aux_labels", "tokens", "am_scores", "lm_scores")


class LatticeFormatError(ValueError):
    pass


def _table_list(words: Union[str, Path, Dict[str, int], Sequence[str]]) -> List[str]:
    if isinstance(words, (str, Path)):
        from rescorer.decoding.lexicon import read_symbol_table

        words = read_symbol_table(words)
    if isinstance(words, dict):
        n = max(words.values()) + 1 if words else 0
        out = [None] * n
        for s, i in words.items():
            out[i] = s
        if any(s is None for s in out):
            raise LatticeFormatError("word symbol table ids are not contiguous from 0")
        return out
    return list(words)


def save_lattices(
    path, utterance_ids: Sequence[str], lattices: Sequence, words, frame_shift: float = 0.04, subsampling_factor: int = 4
) -> Path:
    """Write a shard; every lattice must carry the REQUIRED_ATTRS attributes."""
    if len(utterance_ids) != len(lattices):
        raise ValueError(f"{len(utterance_ids)} utterance ids for {len(lattices)} lattices")
    if len(set(utterance_ids)) != len(utterance_ids):
        raise ValueError("duplicate utterance ids")
    for uid, lat in zip(utterance_ids, lattices):
        missing = [a for a in REQUIRED_ATTRS if not hasattr(lat, a)]
        if missing:
            raise LatticeFormatError(f"lattice of {uid} lacks {missing} (decode.get_lattices attaches them)")
    table = _table_list(words)
    d = {
        "format": FORMAT,
        "utterance_ids": list(utterance_ids),
        "lattices": [lat.as_dict() for lat in lattices],
        "frame_shift": float(frame_shift),
        "subsampling_factor": int(subsampling_factor),
        "words": table,
        "words_path": str(words) if isinstance(words, (str, Path)) else None,
        "tokens": list(TOKENS),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(d, tmp)
    tmp.replace(path)
    return path


def load_lattices(path, words=None):
    """Return (utterance_ids, [k2.Fsa], info dict with frame_shift / words / tokens)."""
    import k2

    path = Path(path)
    if not path.is_file():
        raise LatticeFormatError(f"{path}: no such lattice file")
    try:
        d = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise LatticeFormatError(f"{path}: not a torch lattice file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise LatticeFormatError(f"{path}: format {got!r}, expected {FORMAT!r}")
    for k in ("utterance_ids", "lattices", "frame_shift", "words", "tokens"):
        if k not in d:
            raise LatticeFormatError(f"{path}: missing field {k!r}")
    if list(d["tokens"]) != list(TOKENS):
        raise LatticeFormatError(f"{path}: token list differs from rescorer.tokens")
    if len(d["utterance_ids"]) != len(d["lattices"]):
        raise LatticeFormatError(f"{path}: {len(d['utterance_ids'])} utterance ids for {len(d['lattices'])} lattices")
    table = list(d["words"])
    if words is not None:
        expected = _table_list(words)
        if expected != table:
            diff = next((i for i, (a, b) in enumerate(zip(expected, table)) if a != b), min(len(expected), len(table)))
            raise LatticeFormatError(
                f"{path}: word symbol table mismatch with {words if isinstance(words, (str, Path)) else 'the given table'} "
                f"({len(table)} vs {len(expected)} symbols; first difference at id {diff}): decode with the same lang dir"
            )
    fs = float(d["frame_shift"])
    if not fs > 0:
        raise LatticeFormatError(f"{path}: frame_shift {fs} is not positive")
    lats = []
    for uid, ld in zip(d["utterance_ids"], d["lattices"]):
        missing = [a for a in REQUIRED_ATTRS if a not in ld]
        if "frames" in missing:
            raise LatticeFormatError(f"{path}: lattice of {uid} has no 'frames' attribute: no frame information, cannot place words in time")
        if missing:
            raise LatticeFormatError(f"{path}: lattice of {uid} lacks {missing}")
        lat = k2.Fsa.from_dict(ld)
        aux = lat.aux_labels
        vals = aux if isinstance(aux, torch.Tensor) else aux.values
        if vals.numel() and int(vals.max()) >= len(table):
            raise LatticeFormatError(f"{path}: lattice of {uid} has word id {int(vals.max())} outside the {len(table)}-symbol table")
        if lat.frames.numel() != lat.num_arcs:
            raise LatticeFormatError(f"{path}: lattice of {uid}: {lat.frames.numel()} frame entries for {lat.num_arcs} arcs")
        lats.append(lat)
    info = {k: d.get(k) for k in ("frame_shift", "subsampling_factor", "words", "words_path", "tokens")}
    return list(d["utterance_ids"]), lats, info
