"""Word lattices on disk: plain per-lattice records, stored compactly.

Format ``rescorer.word_lattices/2`` (a tagged file, ``rescorer.formats.tagged``); every
lattice's arcs are concatenated, lattice u being arcs ``arc_offsets[u]:arc_offsets[u + 1]``:

- tensors: ``arc_offsets`` int64 [U + 1]; ``num_states`` int32 [U]; per arc ``src``,
  ``dst``, ``labels`` (word ids; -1 on final arcs), ``start_frame``, ``end_frame`` in the
  narrowest of int16 / int32 that holds the file's values (read back as int32);
  ``am_scores``, ``lm_scores`` float32 (kept at full precision: LM costs reach tens of
  nats, where float16 steps are 0.01-0.03 nats); optionally ``scores`` float32 (stored
  only when some lattice's scores are not ``am_scale*am + lm_scale*lm + wip`` under its
  meta scales, e.g. after embedding rescoring) and ``awe_scores`` float32.
- meta: ``utterance_ids``; ``frame_shift`` (seconds per frame, one number, or a list with
  one per lattice); ``lattice_meta`` (each lattice's JSON meta dict); ``words`` (the
  symbol table: the symbols in id order when ids run 0..N-1, else [symbol, id] pairs; or
  None: the shard then needs the table, checked against ``words_digest``); ``words_digest``; ``prune`` (how the writer pruned:
  ``{"min_posterior": p, "scale": s}``, or None when it kept every arc).

Version 1 (one flat dict of per-utterance records, int32 columns and ``scores`` always)
is still read. This module deals in records (``LatticeRecord``); the lattice package
builds ``WordLattice`` objects from them (``rescorer.lattice.word_lattice``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.formats.tagged import FormatError, read_tagged, require, write_tagged
from rescorer.utils import PathLike

FAMILY = "rescorer.word_lattices"
VERSION = 2
FORMAT = f"{FAMILY}/{VERSION}"
_INT_COLUMNS = ("src", "dst", "labels", "start_frame", "end_frame")
_OPTIONAL_FLOATS = ("scores", "awe_scores")


@dataclass
class LatticeRecord:
    """One word lattice as plain data (the k2-free side of ``WordLattice``)."""

    utterance_id: str
    num_states: int
    arcs: torch.Tensor  # int32 [A, 3]: src, dst, label (k2 order: sorted by src)
    start_frame: torch.Tensor  # int32 [A]
    end_frame: torch.Tensor  # int32 [A]
    am_scores: torch.Tensor  # float32 [A]
    lm_scores: torch.Tensor  # float32 [A]
    frame_shift: float
    meta: Dict[str, Any] = field(default_factory=dict)
    scores: Optional[torch.Tensor] = None  # float32 [A], when not recomputable from am/lm and meta scales
    awe_scores: Optional[torch.Tensor] = None  # float32 [A], the embedding scores of a rescored lattice


@dataclass
class WordLatticeShard:
    records: List[LatticeRecord]
    words: Optional[List[Tuple[str, int]]]  # (symbol, id) pairs, or None (only the digest is stored)
    words_digest: Optional[str]
    prune: Optional[Dict[str, float]] = None


def narrowest_int(values: torch.Tensor) -> torch.dtype:
    """int16 when every value fits, else int32 (int64 values beyond int32 are an error)."""
    if values.numel() == 0:
        return torch.int16
    lo, hi = int(values.min()), int(values.max())
    if -(1 << 15) <= lo and hi < (1 << 15):
        return torch.int16
    if -(1 << 31) <= lo and hi < (1 << 31):
        return torch.int32
    raise FormatError(f"values [{lo}, {hi}] do not fit int32")


def write_word_lattices(path: PathLike, shard: WordLatticeShard) -> Path:
    """Write records as ``rescorer.word_lattices/2`` (atomically)."""
    recs = shard.records
    if not recs:
        raise FormatError(f"{path}: no lattices to save")
    cols: Dict[str, List[torch.Tensor]] = {k: [] for k in _INT_COLUMNS + ("am_scores", "lm_scores")}
    offsets = [0]
    for r in recs:
        a = r.arcs.to(torch.int64)
        for k, v in (("src", a[:, 0]), ("dst", a[:, 1]), ("labels", a[:, 2]), ("start_frame", r.start_frame),
                     ("end_frame", r.end_frame), ("am_scores", r.am_scores), ("lm_scores", r.lm_scores)):
            if v.shape[0] != a.shape[0]:
                raise FormatError(f"{path}: utterance {r.utterance_id!r}: {v.shape[0]} {k} for {a.shape[0]} arcs")
            cols[k].append(v)
        offsets.append(offsets[-1] + a.shape[0])
    tensors = {"arc_offsets": torch.tensor(offsets, dtype=torch.int64),
               "num_states": torch.tensor([r.num_states for r in recs], dtype=torch.int32)}
    for k in _INT_COLUMNS:
        v = torch.cat(cols[k]).to(torch.int64)
        tensors[k] = v.to(narrowest_int(v))
    for k in ("am_scores", "lm_scores"):
        tensors[k] = torch.cat(cols[k]).to(torch.float32)
    for k in _OPTIONAL_FLOATS:
        given = [getattr(r, k) for r in recs]
        if any(g is not None for g in given):
            if any(g is None for g in given):
                raise FormatError(f"{path}: {k} given for some lattices only")
            tensors[k] = torch.cat(given).to(torch.float32)
    shifts = [float(r.frame_shift) for r in recs]
    meta = {
        "utterance_ids": [r.utterance_id for r in recs],
        "frame_shift": shifts[0] if len(set(shifts)) == 1 else shifts,
        "lattice_meta": [dict(r.meta) for r in recs],
        "words": _table_json(shard.words),
        "words_digest": shard.words_digest,
        "prune": dict(shard.prune) if shard.prune else None,
    }
    return write_tagged(path, FAMILY, VERSION, tensors, meta)


def read_word_lattices(path: PathLike) -> WordLatticeShard:
    """Read a shard (version 2, or version 1) into records; errors name the file."""
    tf = read_tagged(path, FAMILY, versions=(VERSION,), legacy_versions=(1,))
    if tf.legacy is not None:
        return _from_version1(tf.legacy, tf.path)
    require(tf, ("arc_offsets", "num_states", "am_scores", "lm_scores") + _INT_COLUMNS,
            ("utterance_ids", "frame_shift", "lattice_meta", "words", "words_digest"))
    t, m = tf.tensors, tf.meta
    ids = list(m["utterance_ids"])
    offsets = t["arc_offsets"].tolist()
    total = offsets[-1] if offsets else -1
    if len(offsets) != len(ids) + 1 or offsets[0] != 0 or len(t["num_states"]) != len(ids) or len(m["lattice_meta"]) != len(ids):
        raise FormatError(f"{tf.path}: the lattice index does not match the {len(ids)} utterance ids")
    for k in _INT_COLUMNS + ("am_scores", "lm_scores") + tuple(k for k in _OPTIONAL_FLOATS if k in t):
        if t[k].shape[0] != total:
            raise FormatError(f"{tf.path}: {t[k].shape[0]} {k} entries for {total} arcs")
    shifts = m["frame_shift"] if isinstance(m["frame_shift"], list) else [m["frame_shift"]] * len(ids)
    if len(shifts) != len(ids):
        raise FormatError(f"{tf.path}: {len(shifts)} frame shifts for {len(ids)} lattices")
    arcs3 = torch.stack([t["src"].to(torch.int32), t["dst"].to(torch.int32), t["labels"].to(torch.int32)], 1)
    recs = []
    for u, uid in enumerate(ids):
        a, b = offsets[u], offsets[u + 1]
        recs.append(LatticeRecord(
            uid, int(t["num_states"][u]), arcs3[a:b].clone(), t["start_frame"][a:b].to(torch.int32),
            t["end_frame"][a:b].to(torch.int32), t["am_scores"][a:b].clone(), t["lm_scores"][a:b].clone(),
            float(shifts[u]), dict(m["lattice_meta"][u]),
            **{k: t[k][a:b].clone() for k in _OPTIONAL_FLOATS if k in t},
        ))
    return WordLatticeShard(recs, _table_from_json(m["words"], tf.path), m["words_digest"], m.get("prune"))


def _table_json(items: Optional[List[Tuple[str, int]]]):
    """The symbol table for the metadata: symbols in id order when the ids are 0..N-1, else pairs."""
    if items is None:
        return None
    if [i for _, i in items] == list(range(len(items))):
        return [s for s, _ in items]
    return [[s, i] for s, i in items]


def _table_from_json(words, path: str) -> Optional[List[Tuple[str, int]]]:
    if words is None:
        return None
    if all(isinstance(w, str) for w in words):
        return [(w, i) for i, w in enumerate(words)]
    if all(isinstance(w, list) and len(w) == 2 for w in words):
        return [(str(s), int(i)) for s, i in words]
    raise FormatError(f"{path}: the symbol table is neither a list of symbols nor [symbol, id] pairs")


def _from_version1(obj: Dict[str, Any], path: str) -> WordLatticeShard:
    if not isinstance(obj.get("lattices"), dict):
        raise FormatError(f"{path}: {FAMILY}/1 file without its lattices")
    recs = []
    for uid, r in obj["lattices"].items():
        try:
            recs.append(LatticeRecord(
                uid, int(r["num_states"]), r["arcs"].to(torch.int32), r["start_frame"].to(torch.int32),
                r["end_frame"].to(torch.int32), r["am_scores"].to(torch.float32), r["lm_scores"].to(torch.float32),
                float(r["frame_shift"]), dict(r.get("meta", {})), scores=r["scores"].to(torch.float32),
            ))
        except (KeyError, AttributeError, TypeError) as e:
            raise FormatError(f"{path}: lattice of {uid!r} is not a {FAMILY}/1 record ({type(e).__name__}: {e})") from None
    words = [(str(s), int(i)) for s, i in obj["words"]] if obj.get("words") is not None else None
    return WordLatticeShard(recs, words, obj.get("words_digest"), None)


def stored_bytes_per_arc(path: PathLike) -> float:
    """File size over stored arcs (what the compact layout is measured by)."""
    shard = read_word_lattices(path)
    arcs = sum(int(r.arcs.shape[0]) for r in shard.records)
    return Path(path).stat().st_size / max(1, arcs)
