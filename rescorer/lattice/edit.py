"""Editing word lattices, k2 style: functions that take a ``WordLattice`` and return a new one.

No function here modifies its input lattice or symbol table. The per-arc attributes of
``word_lattice`` (spans, am / lm scores) travel with every arc; arcs added by OOV
recovery also carry ``oov_lm_arcs`` (which of them take the OOV LM cost when the lattice
is scored, ``scores.with_scores``) and ``oov_advantage`` (how far each proposal beat the arc
it stands beside; scoring drops those below the required margin).

- ``add_arcs``: extra arcs between existing states, with their attributes;
- ``new_arc_mask``: which proposed arcs are new (not in the lattice, not repeated);
- ``with_table``: the same arcs on a larger symbol table (existing ids unchanged);
- ``extend_table``: such a table, a base table plus a word list's missing words;
- ``added_words_on_path``: the words of a path that an edit added.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.lattice.scores import Scales, combine, oov_lm_arcs
from rescorer.lattice.word_lattice import WordLattice, WordSpan

NEW_ARC_ATTRS = ("start_frame", "end_frame", "am_scores", "lm_scores")


def new_arc_mask(old: torch.Tensor, new: torch.Tensor, num_states: int, priority: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool [len(new)]: the rows (src, dst, label) of ``new`` to add.

    A row whose (src, dst, label) is in ``old`` is dropped; of rows that repeat one another,
    one is kept: the one with the highest ``priority`` (ties and no priority: the earliest).
    """
    n = new.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    both = torch.cat([old, new]).long()
    # (src, dst) -> a dense pair id (< number of arcs), so the combined key cannot overflow
    _, pair = torch.unique(both[:, 0] * num_states + both[:, 1], return_inverse=True)
    label = both[:, 2] + 1  # final arcs have -1
    key = pair * (int(label.max()) + 1) + label
    old_key, new_key = key[: old.shape[0]], key[old.shape[0]:]
    pref = torch.arange(n) if priority is None else torch.sort(priority, descending=True, stable=True).indices
    order = pref[torch.sort(new_key[pref], stable=True).indices]  # by key; within a key, preferred first
    sk = new_key[order]
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = sk[1:] != sk[:-1]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[first]] = True
    return keep & ~torch.isin(new_key, old_key)


def add_arcs(lat: WordLattice, rows, attrs: Dict[str, object], words=None) -> WordLattice:
    """A new lattice with extra arcs ``rows`` (src, dst, label) between existing states.

    ``attrs``: ``start_frame``, ``end_frame``, ``am_scores``, ``lm_scores`` of the new arcs,
    optionally ``oov_lm_arcs`` (which of them carry the OOV LM cost) and ``oov_advantage``
    (the evidence ``scores.with_scores`` abstains on; arcs without one get +inf). ``words``: the
    symbol table of the result (default the lattice's; a larger one for new words).
    States keep their numbers (so topological order and the final state are unchanged);
    arcs are stably re-sorted by source state as k2 requires (each state's old arcs first).
    Old arcs keep their ``scores``; new arcs get the combined score (no embedding term)
    under the lattice's ``meta["scales"]``; ``awe_scores`` are not carried (score again
    after editing). ``meta["oov_recovery_arcs"]`` counts the arcs added.
    """
    import k2

    fsa = lat.fsa
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1, 3)
    missing = [n for n in NEW_ARC_ATTRS if n not in attrs]
    if missing:
        raise ValueError(f"add_arcs: no {missing} for the new arcs")
    new = {n: torch.as_tensor(attrs[n]).reshape(-1) for n in NEW_ARC_ATTRS}
    bad = [n for n, v in new.items() if v.numel() != rows.shape[0]]
    if bad:
        raise ValueError(f"add_arcs: {bad} must have one value per new arc ({rows.shape[0]})")
    if rows.numel() and (int(rows[:, :2].min()) < 0 or int(rows[:, :2].max()) >= lat.num_states - 1):
        raise ValueError(f"add_arcs: new arcs must join existing non-final states (0..{lat.num_states - 2})")
    new_scores = combine(Scales.from_meta(lat.meta), new["am_scores"], new["lm_scores"], rows[:, 2])
    allarcs = torch.cat([fsa.arcs.values()[:, :3].long(), rows])
    order = torch.sort(allarcs[:, 0], stable=True).indices
    scores = torch.cat([fsa.scores.float(), new_scores.float()])[order]
    table = torch.empty((allarcs.shape[0], 4), dtype=torch.int32)
    table[:, :3] = allarcs[order].to(torch.int32)
    table[:, 3] = scores.contiguous().view(torch.int32)
    new_fsa = k2.Fsa(table)
    for name in ("start_frame", "end_frame"):
        setattr(new_fsa, name, torch.cat([getattr(fsa, name).to(torch.int32), new[name].to(torch.int32)])[order])
    for name in ("am_scores", "lm_scores"):
        setattr(new_fsa, name, torch.cat([getattr(fsa, name).float(), new[name].float()])[order])
    old_oov = oov_lm_arcs(fsa)
    if old_oov is None:
        old_oov = torch.zeros(fsa.num_arcs, dtype=torch.bool)
    new_oov = torch.as_tensor(attrs.get("oov_lm_arcs", torch.zeros(rows.shape[0], dtype=torch.bool))).bool()
    new_fsa.oov_lm_arcs = torch.cat([old_oov.cpu(), new_oov.cpu()])[order].to(torch.int32)
    old_adv = getattr(fsa, "oov_advantage", None)
    if "oov_advantage" in attrs or old_adv is not None:  # arcs without a value always pass (+inf)
        old_adv = torch.full((fsa.num_arcs,), float("inf")) if old_adv is None else old_adv.float().cpu()
        new_adv = torch.as_tensor(attrs.get("oov_advantage", torch.full((rows.shape[0],), float("inf")))).float().reshape(-1)
        new_fsa.oov_advantage = torch.cat([old_adv, new_adv.cpu()])[order]
    meta = dict(lat.meta)
    meta["oov_recovery_arcs"] = meta.get("oov_recovery_arcs", 0) + int(rows.shape[0])
    return WordLattice(new_fsa, lat.frame_shift, lat.words if words is None else words, lat.utterance_id, meta)


def with_table(lat: WordLattice, words) -> WordLattice:
    """The same lattice (same Fsa) on ``words``, a table that keeps every id of the lattice's."""
    if words is lat.words:
        return lat
    return WordLattice(lat.fsa, lat.frame_shift, words, lat.utterance_id, dict(lat.meta))


def extend_table(base, words: Sequence[str]):
    """(table, ids): ``base`` plus the words of ``words`` it lacks, and each word's id in it.

    New words are numbered after ``base``'s largest id in list order, so the ids do not
    depend on anything but the two inputs. ``base`` is never modified; it is returned as
    is when it already has every word.
    """
    import k2

    missing = [w for w in dict.fromkeys(words) if w not in base]
    table = base
    if missing:
        table = k2.SymbolTable(eps=base.eps)
        for i in base.ids:
            table.add(base.get(i), i)
        for w in missing:
            table.add(w)
    return table, torch.tensor([int(table[w]) for w in words], dtype=torch.long)


def added_words_on_path(lat: WordLattice, words: Sequence[WordSpan], added: Sequence[Tuple[str, float, float]]) -> List[Tuple[str, float, float]]:
    """The path's words that come from added arcs: (word, span) among ``added`` and not in ``lat``
    (the lattice before the edit)."""
    if not added:
        return []
    new = set(added)
    f = lat.fsa
    out = []
    for w in words:
        if (w.word, w.start, w.end) not in new:
            continue
        if w.word in lat.words:
            s, e = round(w.start / lat.frame_shift), round(w.end / lat.frame_shift)
            if bool(((f.labels == int(lat.words[w.word])) & (f.start_frame == s) & (f.end_frame == e)).any()):
                continue  # the input lattice had this word on this span already
        out.append((w.word, w.start, w.end))
    return out
