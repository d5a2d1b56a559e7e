"""Token lattices: the decoder's k2 CTC lattices of a split, one shard file per decode.

Format ``rescorer.token_lattices/2`` (a tagged file, ``rescorer.formats.tagged``):

- tensors: ``arcs`` int32 [A, 4] (k2's arc rows: src, dst, label, score bits) of every
  lattice concatenated, lattice u being rows ``arc_offsets[u]:arc_offsets[u + 1]``;
  ``arc_offsets`` int64 [U + 1]; one tensor per per-arc attribute, concatenated the same
  way: ``frames`` (int32, the lattice frame at which the arc is taken; every path takes
  one arc per frame; the final arc has frame T = number of lattice frames), ``tokens``
  (token emitted on the arc, 0 if none), ``am_scores`` (CTC log-prob, nats), ``lm_scores``
  (graph score: LM log-prob in nats plus ``<unk>`` penalties; ``scores`` = am + lm);
  ``aux_labels`` (word ids into ``words``: 0, 1 or 2 per arc) as ``aux_labels.counts``
  int32 [A] and ``aux_labels.values`` int32.
- meta: ``utterance_ids``; ``frame_shift`` (seconds per lattice frame: 10 ms fbank x
  subsampling 4 = 0.04); ``subsampling_factor``; ``words`` (the word symbol table as a
  list, ``words[i]`` = symbol of id i: ``words.txt`` of the lang dir); ``words_path``
  (informational); ``tokens`` (``rescorer.tokens.TOKENS``); ``attributes`` and ``ragged``
  (the names of the per-arc tensors above).

Lattices are CTC lattices from HLG (top-sorted; state 0 start, last state final).
A word's time span comes from its tokens (rescorer.decoding.decode: start = frame of its
first letter, end = frame of its ``|`` + 1; seconds = frames x frame_shift). ``<unk>``
arcs are words outside the LM, spelled by the letter loop (the ``tokens`` on the path).
For word lattices, ``rescorer.decoding.decode.word_lattice_arcs`` gives the arcs that
``rescorer.lattice.word_lattice.build_word_lattice`` takes.

Version 1 stored pickled k2 objects (``RaggedTensor``), which are not plain data: such
files are refused (decode again). ``load_lattices`` checks the format, the attributes
(a lattice without ``frames`` is an error: no frame information), that word ids are
inside the table and, when given, that the table equals the caller's ``words.txt``;
every error names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from rescorer.formats.contract import LATTICE_FRAME_SHIFT, SUBSAMPLING_FACTOR, check_frame_shift
from rescorer.formats.tagged import FormatError, UnsafeFileError, read_tagged, require, write_tagged
from rescorer.tokens import TOKENS
from rescorer.utils import PathLike

FAMILY = "rescorer.token_lattices"
VERSION = 2
FORMAT = f"{FAMILY}/{VERSION}"
REQUIRED_ATTRS = ("frames", "aux_labels", "tokens", "am_scores", "lm_scores")


class LatticeFormatError(FormatError):
    pass


def read_word_table(path: PathLike) -> List[str]:
    """``words.txt`` (``symbol id`` per line) as a list indexed by id."""
    table: Dict[str, int] = {}
    for n, ln in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = ln.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise LatticeFormatError(f"{path}:{n}: expected 'symbol id', got {ln!r}")
        table[parts[0]] = int(parts[1])
    return _table_list(table)


def _table_list(words: Union[str, Path, Dict[str, int], Sequence[str]]) -> List[str]:
    if isinstance(words, (str, Path)):
        return read_word_table(words)
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
    path, utterance_ids: Sequence[str], lattices: Sequence, words, frame_shift: float = LATTICE_FRAME_SHIFT,
    subsampling_factor: int = SUBSAMPLING_FACTOR,
) -> Path:
    """Write a shard of k2 lattices; every lattice must carry the REQUIRED_ATTRS attributes."""
    if len(utterance_ids) != len(lattices):
        raise ValueError(f"{len(utterance_ids)} utterance ids for {len(lattices)} lattices")
    if len(set(utterance_ids)) != len(utterance_ids):
        raise ValueError("duplicate utterance ids")
    for uid, lat in zip(utterance_ids, lattices):
        missing = [a for a in REQUIRED_ATTRS if not hasattr(lat, a)]
        if missing:
            raise LatticeFormatError(f"lattice of {uid} lacks {missing} (decode.get_lattices attaches them)")
    dense: Dict[str, List[torch.Tensor]] = {}
    ragged: Dict[str, List[torch.Tensor]] = {}
    arcs, offsets = [], [0]
    for uid, lat in zip(utterance_ids, lattices):
        d = lat.as_dict()
        arcs.append(d.pop("arcs").to(torch.int32))
        offsets.append(offsets[-1] + arcs[-1].shape[0])
        for name, v in d.items():
            if isinstance(v, torch.Tensor):
                dense.setdefault(name, []).append(v)
            elif hasattr(v, "shape") and hasattr(v, "values") and hasattr(v.shape, "row_splits"):  # k2.RaggedTensor
                rs = v.shape.row_splits(1)
                ragged.setdefault(name + ".counts", []).append((rs[1:] - rs[:-1]).to(torch.int32))
                ragged.setdefault(name + ".values", []).append(v.values)
        if set(dense) != {k for k in d if isinstance(d[k], torch.Tensor)}:
            raise LatticeFormatError(f"lattice of {uid}: its attributes differ from the first lattice's")
    tensors = {"arcs": torch.cat(arcs), "arc_offsets": torch.tensor(offsets, dtype=torch.int64)}
    for name, parts in {**dense, **ragged}.items():
        if len(parts) != len(lattices):
            raise LatticeFormatError(f"{path}: attribute {name!r} is missing on some lattices")
        tensors[name] = torch.cat(parts)
    meta = {
        "utterance_ids": list(utterance_ids), "frame_shift": float(frame_shift), "subsampling_factor": int(subsampling_factor),
        "words": _table_list(words), "words_path": str(words) if isinstance(words, (str, Path)) else None,
        "tokens": list(TOKENS), "attributes": sorted(dense), "ragged": sorted(n[: -len(".counts")] for n in ragged if n.endswith(".counts")),
    }
    return write_tagged(path, FAMILY, VERSION, tensors, meta)


def load_lattices(path, words=None, frame_shift: Optional[float] = None):
    """Return (utterance_ids, [k2.Fsa], info dict with frame_shift / words / tokens).

    With ``frame_shift`` (seconds per lattice frame), the recorded one must match.
    """
    import k2

    path = Path(path)
    if not path.is_file():
        raise LatticeFormatError(f"{path}: no such lattice file")
    try:
        tf = read_tagged(path, FAMILY, versions=(VERSION,))
    except UnsafeFileError:
        raise
    except FormatError as e:
        raise LatticeFormatError(f"{e} (expected {FORMAT!r})") from None
    require(tf, ("arcs", "arc_offsets"), ("utterance_ids", "frame_shift", "words", "tokens", "attributes", "ragged"))
    m, t = tf.meta, tf.tensors
    if list(m["tokens"]) != list(TOKENS):
        raise LatticeFormatError(f"{path}: token list differs from rescorer.tokens")
    ids = list(m["utterance_ids"])
    offsets = t["arc_offsets"].tolist()
    if len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != t["arcs"].shape[0]:
        raise LatticeFormatError(f"{path}: {len(offsets) - 1} lattices in arc_offsets for {len(ids)} utterance ids")
    table = list(m["words"])
    if words is not None:
        expected = _table_list(words)
        if expected != table:
            diff = next((i for i, (a, b) in enumerate(zip(expected, table)) if a != b), min(len(expected), len(table)))
            raise LatticeFormatError(
                f"{path}: word symbol table mismatch with {words if isinstance(words, (str, Path)) else 'the given table'} "
                f"({len(table)} vs {len(expected)} symbols; first difference at id {diff}): decode with the same lang dir"
            )
    fs = float(m["frame_shift"])
    if not fs > 0:
        raise LatticeFormatError(f"{path}: frame_shift {fs} is not positive")
    if frame_shift is not None:
        check_frame_shift(fs, frame_shift, str(path))
    present = set(m["attributes"]) | set(m["ragged"])
    missing = [a for a in REQUIRED_ATTRS if a not in present]
    if "frames" in missing:
        raise LatticeFormatError(f"{path}: the lattices have no 'frames' attribute: no frame information, cannot place words in time")
    if missing:
        raise LatticeFormatError(f"{path}: the lattices lack {missing}")
    for name in list(m["attributes"]) + [r + s for r in m["ragged"] for s in (".counts", ".values")]:
        if name not in t:
            raise LatticeFormatError(f"{path}: attribute tensor {name!r} is missing")
    for name in m["attributes"]:
        if t[name].shape[0] != t["arcs"].shape[0]:
            raise LatticeFormatError(f"{path}: {t[name].shape[0]} {name} entries for {t['arcs'].shape[0]} arcs")
    ragged_at = {}
    for name in m["ragged"]:
        counts = t[name + ".counts"].long()
        if counts.shape[0] != t["arcs"].shape[0] or int(counts.sum()) != t[name + ".values"].shape[0] or bool((counts < 0).any()):
            raise LatticeFormatError(f"{path}: ragged attribute {name!r} does not fit the arcs")
        value_offsets = torch.zeros(counts.shape[0] + 1, dtype=torch.long)
        value_offsets[1:] = torch.cumsum(counts, 0)
        ragged_at[name] = (counts, value_offsets)
    lats = []
    for k, uid in enumerate(ids):
        a, b = offsets[k], offsets[k + 1]
        d = {"arcs": t["arcs"][a:b].contiguous()}
        for name in m["attributes"]:
            d[name] = t[name][a:b].clone()
        for name, (counts, vo) in ragged_at.items():
            c = counts[a:b]
            rs = torch.zeros(b - a + 1, dtype=torch.int32)
            rs[1:] = torch.cumsum(c, 0).to(torch.int32)
            shape = k2.ragged.create_ragged_shape2(row_splits=rs, cached_tot_size=int(rs[-1]))
            d[name] = k2.RaggedTensor(shape, t[name + ".values"][int(vo[a]) : int(vo[b])].to(torch.int32).contiguous())
        lat = k2.Fsa.from_dict(d)
        aux = lat.aux_labels
        vals = aux if isinstance(aux, torch.Tensor) else aux.values
        if vals.numel() and int(vals.max()) >= len(table):
            raise LatticeFormatError(f"{path}: lattice of {uid} has word id {int(vals.max())} outside the {len(table)}-symbol table")
        if lat.frames.numel() != lat.num_arcs:
            raise LatticeFormatError(f"{path}: lattice of {uid}: {lat.frames.numel()} frame entries for {lat.num_arcs} arcs")
        lats.append(lat)
    info = {"frame_shift": fs, "subsampling_factor": m.get("subsampling_factor"), "words": table,
            "words_path": m.get("words_path"), "tokens": list(m["tokens"])}
    return ids, lats, info
