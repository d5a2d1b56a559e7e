"""pocketsphinx 5.1.1 lattices for lhotse cuts: SLF files -> WordLattices with trigram LM scores.

``decode_with_pocketsphinx(cuts, out_dir, num_jobs)`` writes, per utterance (resumable:
utterances whose files exist are skipped):

- ``out_dir/slf/<utt>.slf.gz``: pocketsphinx's own SLF (``Lattice.write_htk``; its
  conventions are in ``rescorer.lattice.slf``), gzipped;
- ``out_dir/hyps/<utt>.json``: pocketsphinx's 1-best (``Decoder.hyp()``, called before
  ``get_lattice()``), the normalised reference, duration, decode seconds (for RTF);

and ``lattices_from_slf(out_dir)`` converts them into ``out_dir/lattices/<utt>.pt``, one
``rescorer.word_lattices`` shard per utterance (written with ``include_words=False``:
load with ``load_word_lattices(path, k2.SymbolTable.from_file(out_dir/words.txt))``), and ``out_dir/words.txt`` (the k2
symbol table: ``<eps>`` 0, ``<unk>`` 1, then the normalised words of the pocketsphinx
dictionary).

LM scores: the SLF has none, so they are recomputed from the bundled trigram
(``en-us.lm.bin``, through the wheel's ``NGramModel``; natural log). An arc's LM score
depends on the two previous words, so the lattice is expanded: a state is (SLF node,
last n-1 words); fillers leave the history unchanged and get LM score 0; the first word is
scored after ``<s>`` and the final arc carries ln P(</s> | history). If the trigram
expansion exceeds ``max_states`` the bigram (then unigram) is used; ``meta["lm_order"]``
says which. The decoder's combined score uses ``POCKETSPHINX_SCALES``: am + 9.5 lm +
ln(0.65) per word (bestpath's lw and wip; filler penalties are already in the SLF's ``a=``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from rescorer.formats.contract import SAMPLE_RATE, UNK
from rescorer.lattice.scores import Scales
from rescorer.lattice.slf import SLFError, SLFLattice, base_word, is_filler, link_words, read_slf, slf_to_word_lattice
from rescorer.lattice.word_lattice import (
    WordLatticeError,
    best_path,
    from_arrays,
    load_word_lattices,
    make_word_table,
    oracle_path,
    save_word_lattices,
)
from rescorer.text import NotAWordError, normalize_word, split_words

POCKETSPHINX_SCALES = Scales(am_scale=1.0, lm_scale=9.5, word_insertion_penalty=math.log(0.65))
LOG_ZERO_LN = -1000.0  # floor for words unknown to the LM (pocketsphinx's log-zero is ~ -53684)


def model_paths() -> Dict[str, str]:
    from pocketsphinx import get_model_path

    m = Path(get_model_path())
    return {"hmm": str(m / "en-us" / "en-us"), "lm": str(m / "en-us" / "en-us.lm.bin"), "dict": str(m / "en-us" / "cmudict-en-us.dict")}


class TrigramLM:
    """The bundled pocketsphinx LM: ``logprob(word, history)`` in natural log (history most recent first)."""

    def __init__(self, path: Optional[str] = None):
        from pocketsphinx import Config, LogMath, NGramModel

        self.lmath = LogMath()
        self.lm = NGramModel(Config(), self.lmath, path or model_paths()["lm"])
        self._cache: Dict[tuple, float] = {}

    def logprob(self, word: str, history: Tuple[str, ...] = ()) -> float:
        key = (word,) + tuple(history)
        v = self._cache.get(key)
        if v is None:
            v = max(self.lmath.log_to_ln(self.lm.prob(list(key))), LOG_ZERO_LN)
            self._cache[key] = v
        return v


def pocketsphinx_word_table(dict_path: Optional[str] = None, unk: str = UNK):
    """k2 SymbolTable of the normalised base words of the pocketsphinx dictionary."""
    words = set()
    with open(dict_path or model_paths()["dict"], encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            w = base_word(line.split()[0])
            try:
                words.add(normalize_word(w))
            except NotAWordError:
                pass
    return make_word_table(words, unk=unk)


def _pcm16(cut) -> bytes:
    import numpy as np

    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    x = cut.load_audio()
    if x.ndim == 2:
        x = x.mean(axis=0)
    return (np.clip(x, -1.0, 1.0 - 1.0 / 32768) * 32768).astype("<i2").tobytes()


def _ref_words(cut) -> List[str]:
    text = " ".join(s.text or "" for s in cut.supervisions)
    try:
        return split_words(text)
    except NotAWordError:
        return []


def hyp_words(hypstr: str) -> List[str]:
    """pocketsphinx hypothesis string -> normalised words (fillers dropped, variants stripped)."""
    out = []
    for w in hypstr.split():
        if is_filler(w):
            continue
        try:
            out.append(normalize_word(base_word(w)))
        except NotAWordError:
            out.append(base_word(w).lower())
    return out


def _decode_worker(args) -> int:
    cut_dicts, out_dir, progress = args
    from lhotse import MonoCut
    from pocketsphinx import Decoder

    out = Path(out_dir)
    d = Decoder(loglevel="ERROR")
    n = 0
    for cd in cut_dicts:
        cut = MonoCut.from_dict(cd)
        slf = out / "slf" / f"{cut.id}.slf.gz"
        hj = out / "hyps" / f"{cut.id}.json"
        if slf.exists() and hj.exists():
            continue
        pcm = _pcm16(cut)
        t0 = time.perf_counter()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        h = d.hyp()  # before get_lattice(), or the posteriors are all 1
        lat = d.get_lattice() if h is not None else None
        dt = time.perf_counter() - t0
        if lat is not None:
            tmp = out / "slf" / f".{cut.id}.slf.tmp"
            lat.write_htk(str(tmp))
            with open(tmp, "rb") as fi, gzip.open(str(slf) + ".tmp", "wb") as fo:
                shutil.copyfileobj(fi, fo)
            tmp.unlink()
            os.replace(str(slf) + ".tmp", slf)
        rec = {
            "id": cut.id, "hyp_raw": h.hypstr if h is not None else "", "hyp": hyp_words(h.hypstr) if h is not None else [],
            "ref": _ref_words(cut), "duration": cut.duration, "decode_seconds": dt, "num_frames": d.n_frames(),
            "has_lattice": lat is not None,
        }
        hj.with_suffix(".tmp").write_text(json.dumps(rec))
        os.replace(hj.with_suffix(".tmp"), hj)
        n += 1
        if progress and n % 25 == 0:
            print(f"[pocketsphinx pid {os.getpid()}] {n} decoded", flush=True)
    return n


def decode_with_pocketsphinx(cuts, out_dir: Union[str, Path], num_jobs: int = 1, progress: bool = True, convert: bool = True) -> Dict:
    """Decode lhotse cuts (a CutSet, an iterable of cuts or a manifest path) with pocketsphinx.

    Writes SLF + 1-best per utterance (skipping finished ones), then (``convert``) the word
    lattices; returns the summary of ``summarize``.
    """
    from lhotse import load_manifest_lazy

    if isinstance(cuts, (str, Path)):
        cuts = load_manifest_lazy(cuts)
    out = Path(out_dir)
    (out / "slf").mkdir(parents=True, exist_ok=True)
    (out / "hyps").mkdir(parents=True, exist_ok=True)
    todo = [c.to_dict() for c in cuts if not ((out / "slf" / f"{c.id}.slf.gz").exists() and (out / "hyps" / f"{c.id}.json").exists())]
    t0 = time.perf_counter()
    if todo:
        if progress:
            print(f"[pocketsphinx] decoding {len(todo)} utterances with {num_jobs} job(s)", flush=True)
        if num_jobs <= 1:
            _decode_worker((todo, str(out), progress))
        else:
            import multiprocessing as mp

            parts = [todo[i::num_jobs] for i in range(num_jobs)]
            with mp.get_context("spawn").Pool(num_jobs) as pool:
                pool.map(_decode_worker, [(p, str(out), progress) for p in parts])
    wall = time.perf_counter() - t0
    if convert:
        lattices_from_slf(out, progress=progress)
    s = summarize(out)
    s["decode_wall_seconds_this_run"] = wall
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    return s


# ---------------------------------------------------------------------------- lattices


def expand_with_lm(
    slf: SLFLattice, words, lm: TrigramLM, *, order: int = 3, max_states: int = 50_000, frame_shift: float = 0.01,
    min_posterior: float = 1e-3, utterance_id: Optional[str] = None, unk: str = UNK, scales=POCKETSPHINX_SCALES,
):
    """A WordLattice from a pocketsphinx SLF with per-arc n-gram LM scores (module docstring).

    Links whose SLF posterior ``p=`` is below ``min_posterior`` are pruned first (the
    pocketsphinx lattices have 5k-16k links; the trigram expansion of all of them has
    ~10^5-10^6 states). On speechocean762 dev at 1e-3: trigram for 454/500 utterances
    (bigram for 46), median 34k arcs (p90 140k, max 238k), ~0.9 s per utterance.
    """
    raw = link_words(slf, "pocketsphinx")
    lmw: List[Optional[str]] = [None if is_filler(w) else base_word(w) for w in raw]
    ids: Dict[str, int] = {}
    for w in lmw:
        if w is not None and w not in ids:
            try:
                nw = normalize_word(w)
            except NotAWordError:
                nw = None
            ids[w] = int(words[nw]) if nw is not None and nw in words else int(words[unk])
    for threshold in (min_posterior, 0.0):  # no pruning if it would leave no complete path
        keep = [lk.posterior is None or lk.posterior >= threshold for lk in slf.links]
        out_links: List[List[int]] = [[] for _ in slf.nodes]
        in_links: List[List[int]] = [[] for _ in slf.nodes]
        for j, lk in enumerate(slf.links):
            if keep[j]:
                out_links[lk.start].append(j)
                in_links[lk.end].append(j)
        # only links on a start -> end path of the pruned graph
        fwd, stack = {slf.start}, [slf.start]
        while stack:
            for j in out_links[stack.pop()]:
                if slf.links[j].end not in fwd:
                    fwd.add(slf.links[j].end)
                    stack.append(slf.links[j].end)
        bwd, stack = {slf.end}, [slf.end]
        while stack:
            for j in in_links[stack.pop()]:
                if slf.links[j].start not in bwd:
                    bwd.add(slf.links[j].start)
                    stack.append(slf.links[j].start)
        live = fwd & bwd
        if slf.start in live:
            break
    min_posterior = threshold
    out_links = [[j for j in js if slf.links[j].start in live and slf.links[j].end in live] for js in out_links]
    kept_links = sum(map(len, out_links))
    # topological order of nodes from the start
    indeg = [0] * len(slf.nodes)
    for js in out_links:
        for j in js:
            indeg[slf.links[j].end] += 1
    stack, topo = [slf.start], []
    while stack:
        s = stack.pop()
        topo.append(s)
        for j in out_links[s]:
            e = slf.links[j].end
            indeg[e] -= 1
            if indeg[e] == 0:
                stack.append(e)
    import torch

    times = [n.time for n in slf.nodes]
    unk_id = int(words[unk])
    # per-link constants: word id, span, acoustic score
    link_lab = [0 if w is None else ids[w] for w in lmw]
    node_frame = [None if t is None else int(round(t / frame_shift)) for t in times]
    for o in range(order, 0, -1):
        h0 = ("<s>",)[: o - 1]
        hists: Dict[int, set] = {slf.start: {h0}}
        sid: Dict[tuple, int] = {}
        src, dst_keys, link_of, lms = [], [], [], []
        too_big = False
        created = 1
        for s in topo:
            hs = hists.get(s)
            if not hs:
                continue
            for h in sorted(hs):
                me = sid[(s, h)] = len(sid)
                for j in out_links[s]:
                    end = slf.links[j].end
                    w = lmw[j]
                    if w is None:
                        nh, lms_j = h, 0.0
                    else:
                        lms_j = lm.logprob(w, h)
                        nh = ((w,) + h)[: o - 1]
                    tgt = hists.setdefault(end, set())
                    if nh not in tgt:
                        tgt.add(nh)
                        created += 1
                    src.append(me)
                    dst_keys.append((end, nh))
                    link_of.append(j)
                    lms.append(lms_j)
            if created > max_states and o > 1:  # the unigram lattice is the SLF itself: never too big
                too_big = True
                break
        if not too_big:
            break
    if any(node_frame[n] is None for n in hists):
        raise SLFError(f"{slf.source}: nodes without times (t=): a lattice without frame information")
    final = len(sid)
    dst = [sid[k] for k in dst_keys]
    jj = torch.tensor(link_of, dtype=torch.long)
    lab = torch.tensor(link_lab, dtype=torch.int32)[jj]
    sfr = torch.tensor([node_frame[lk.start] or 0 for lk in slf.links], dtype=torch.int32)[jj]
    efr = torch.tensor([node_frame[lk.end] or 0 for lk in slf.links], dtype=torch.int32)[jj]
    ams = torch.tensor([lk.acoustic for lk in slf.links], dtype=torch.float32)[jj]
    fin = sorted(hists.get(slf.end, ()))
    ef_end = node_frame[slf.end]
    src += [sid[(slf.end, h)] for h in fin]
    dst += [final] * len(fin)
    lab = torch.cat([lab, torch.full((len(fin),), -1, dtype=torch.int32)])
    sfr = torch.cat([sfr, torch.full((len(fin),), ef_end, dtype=torch.int32)])
    efr = torch.cat([efr, torch.full((len(fin),), ef_end, dtype=torch.int32)])
    ams = torch.cat([ams, torch.zeros(len(fin))])
    lms += [lm.logprob("</s>", h) for h in fin]
    meta = {
        "source": slf.source, "lm_order": o, "unknown_words": int((lab == unk_id).sum()),
        "slf_nodes": len(slf.nodes), "slf_links": len(slf.links), "min_posterior": min_posterior, "kept_links": kept_links,
    }
    return from_arrays(
        src, dst, lab, sfr, efr, ams, lms, words, frame_shift=frame_shift, utterance_id=utterance_id or slf.utterance or "",
        am_scale=scales.am_scale, lm_scale=scales.lm_scale, word_insertion_penalty=scales.word_insertion_penalty,
        meta=meta,
    )


def lattices_from_slf(out_dir: Union[str, Path], progress: bool = True, max_states: int = 50_000, min_posterior: float = 1e-3) -> int:
    """Convert ``slf/*.slf.gz`` into ``lattices/<utt>.pt`` (skipping existing ones)."""
    out = Path(out_dir)
    (out / "lattices").mkdir(parents=True, exist_ok=True)
    table_file = out / "words.txt"
    if table_file.exists():
        import k2

        words = k2.SymbolTable.from_file(str(table_file))
    else:
        words = pocketsphinx_word_table()
        words.to_file(str(table_file) + ".tmp")
        os.replace(str(table_file) + ".tmp", table_file)
    lm = None
    n = 0
    for slf_path in sorted((out / "slf").glob("*.slf.gz")):
        utt = slf_path.name[: -len(".slf.gz")]
        dst = out / "lattices" / f"{utt}.pt"
        if dst.exists():
            continue
        if lm is None:
            lm = TrigramLM()
        t0 = time.perf_counter()
        lat = expand_with_lm(read_slf(slf_path), words, lm, utterance_id=utt, max_states=max_states, min_posterior=min_posterior)
        lat.meta["convert_seconds"] = time.perf_counter() - t0
        save_word_lattices(dst, [lat], include_words=False)
        n += 1
        if progress and n % 50 == 0:
            print(f"[pocketsphinx] {n} lattices converted", flush=True)
    return n


def _pruned(slf: SLFLattice, min_posterior: float) -> SLFLattice:
    links = [lk for lk in slf.links if lk.posterior is None or lk.posterior >= min_posterior]
    return SLFLattice(slf.header, slf.nodes, links, slf.source, slf.pocketsphinx, slf.start, slf.end, slf.base)


def summarize(out_dir: Union[str, Path], oracle: bool = True, slf_oracle: bool = False, check_1best: bool = True,
              compact: bool = False) -> Dict:
    """1-best WER (kaldialign), lattice oracle WERs, RTF over the finished utterances.

    ``oracle_wer``: on the word lattices (computed on the pruned SLF graph, which has the
    same word sequences as the LM-expanded lattice and is ~100x smaller);
    ``oracle_wer_slf`` (with ``slf_oracle``): on the full, unpruned pocketsphinx lattices;
    ``lattice_1best_equals_pocketsphinx`` (``check_1best``): utterances whose best path
    under POCKETSPHINX_SCALES equals pocketsphinx's own 1-best. ``compact`` rewrites shards
    that still embed the symbol table without it.
    """
    import kaldialign

    out = Path(out_dir)
    same_1best = 0
    tot = {"ref": 0, "err": 0, "ins": 0, "del": 0, "sub": 0, "oracle_err": 0, "slf_err": 0}
    table = None
    if (out / "words.txt").exists():
        import k2

        table = k2.SymbolTable.from_file(str(out / "words.txt"))
    dur = dec = 0.0
    n = n_lat = 0
    for hj in sorted((out / "hyps").glob("*.json")):
        r = json.loads(hj.read_text())
        if not r["ref"]:
            continue
        n += 1
        e = kaldialign.edit_distance(r["ref"], r["hyp"])
        tot["ref"] += len(r["ref"])
        tot["err"] += e["total"]
        for k in ("ins", "del", "sub"):
            tot[k] += e[k]
        dur += r["duration"]
        dec += r["decode_seconds"]
        lp = out / "lattices" / f"{r['id']}.pt"
        sp = out / "slf" / f"{r['id']}.slf.gz"
        have = lp.exists() and sp.exists() and table is not None
        n_lat += have
        th = 1e-3
        if have and (check_1best or compact):
            lat = next(iter(load_word_lattices(lp, table).values()))
            th = lat.meta.get("min_posterior", th)
            same_1best += [w.word for w in best_path(lat)] == r["hyp"]
            if compact and shard_has_words(lp):
                save_word_lattices(lp, [lat], include_words=False)
        if not have:  # no lattice: the oracle is the 1-best
            tot["oracle_err"] += e["total"]
            tot["slf_err"] += e["total"]
            continue
        if oracle or slf_oracle:
            slf = read_slf(sp)
            if oracle:
                try:
                    pl = slf_to_word_lattice(_pruned(slf, th), table, convention="pocketsphinx", utterance_id=r["id"])
                except (SLFError, WordLatticeError):
                    pl = slf_to_word_lattice(slf, table, convention="pocketsphinx", utterance_id=r["id"])
                tot["oracle_err"] += oracle_path(pl, r["ref"])[0]
            if slf_oracle:
                full = slf_to_word_lattice(slf, table, convention="pocketsphinx", utterance_id=r["id"])
                tot["slf_err"] += oracle_path(full, r["ref"])[0]
    return {
        "utterances": n, "with_lattice": n_lat, "ref_words": tot["ref"],
        "wer_1best": tot["err"] / max(tot["ref"], 1),
        "ins": tot["ins"], "del": tot["del"], "sub": tot["sub"],
        "oracle_wer": tot["oracle_err"] / max(tot["ref"], 1) if oracle else None,
        "oracle_wer_slf": tot["slf_err"] / max(tot["ref"], 1) if slf_oracle else None,
        "lattice_1best_equals_pocketsphinx": same_1best if check_1best else None,
        "audio_seconds": dur, "decode_seconds": dec, "rtf": dec / max(dur, 1e-9),
    }


def shard_has_words(path) -> bool:
    """Whether a word-lattice shard stores its symbol table (read as plain data)."""
    from rescorer.formats.word_lattices import read_word_lattices

    return read_word_lattices(path).words is not None
