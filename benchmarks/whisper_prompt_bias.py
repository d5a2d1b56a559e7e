#!/usr/bin/env python
"""Whisper biased toward list words by its prompt (previous text), the way its users bias it
toward names: which list words come out right and wrong, by where the prompt's words come from.

    python benchmarks/whisper_prompt_bias.py --workdir /path/to/speechocean762_run \\
        --corpus speechocean762_dev/whisper_l34 --out results/whisper_prompt_bias.json

For every dev utterance (``--cuts``, the recipe's dev manifest) Whisper transcribes once per
prompt source (``WhisperTextScorer.transcribe(prompt=...)``, beam ``--beam-size``):
``none``; ``random``: ``--words`` words of the context list at random; ``oracle``: the
utterance's own context-list words from its reference, filled up with random list words (a bound:
what biasing would give if the candidates were right); ``embedder``: the ``--words`` list words the
embedder (``exp/embeddings``) ranks highest by their best cosine over the spans of the decoder's
lattice arcs (``exp/decode_dev_ctc/word_lattices.pt``), no reference used; ``margin``: at most
``--margin-words`` list words whose cosine on some arc span beats the arc words' own on it by
``--margin`` (fewer, purer candidates; often none); ``ctc``: at most ``--words`` list words the
CTC word spotter (``decoding.word_spotting.spot``, ``SpottingConfig()``) finds over the decoder's
CTC log-probs (``--ctc-log-probs``), best spotting score first (the CTC-WS anchor's spotter, here
on the decoder's own CTC model; no reference used). Counted per source:
the list words of at least ``--min-letters`` letters in the transcript, right or wrong against the
reference (as multisets), those not in the unprompted transcript (``new_right``, ``new_wrong``), and
the reference tokens whose word the prompt held. Why: a context list's words are what a user would
prompt Whisper with; this says whether any candidate source here is pure enough to pay.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("none", "random", "oracle", "embedder", "margin", "ctc")


def arc_spans(rescorer, feats, record):
    """Each arc's (start, end) in the embedder's feature frames (``rescore.spans_in_feature_frames``,
    the spans rescoring embeds)."""
    from rescorer.rescore import spans_in_feature_frames

    s, e = spans_in_feature_frames(record.start_frame, record.end_frame, record.frame_shift, int(feats.shape[0]),
                                   rescorer.frame_shift)
    return list(zip(s.tolist(), e.tolist()))


def span_audio(rescorer, feats, spans):
    """The spans' unit-length audio embeddings."""
    import torch.nn.functional as F

    return F.normalize(rescorer.span_embeddings(feats, spans).float().cpu(), dim=-1)


def embedder_candidates(rescorer, feats, record, words, vocab_emb, k: int):
    """The ``k`` list words with the highest best cosine over the lattice's distinct arc spans."""
    import torch

    spans = sorted({(a, b) for a, b in arc_spans(rescorer, feats, record) if b > a})
    if not spans:
        return []
    audio = span_audio(rescorer, feats, spans)
    best = (audio @ vocab_emb.T).max(0).values
    return [words[j] for j in torch.topk(best, min(k, len(words))).indices.tolist()]


def margin_candidates(rescorer, feats, record, id2word, words, vocab_emb, k: int, margin: float):
    """At most ``k`` list words, each beating the lattice's own words on some arc span: its cosine with
    the span's audio at least ``margin`` above the best of the arc words' on that span; ranked by
    that lead (the evidence `awe_rescore_oov_recovery`'s margin gate reads)."""
    import torch
    import torch.nn.functional as F

    from rescorer.text import is_word

    own = {}
    for (a, b), label in zip(arc_spans(rescorer, feats, record), record.arcs[:, 2].tolist()):
        w = id2word.get(label)
        if b > a and w is not None and is_word(w):
            own.setdefault((a, b), set()).add(w)
    spans = sorted(own)
    if not spans:
        return []
    audio = span_audio(rescorer, feats, spans)
    arc_words = sorted({w for ws in own.values() for w in ws})
    arc_emb = F.normalize(rescorer.spelling_embeddings(arc_words).float().cpu(), dim=-1)
    index = {w: i for i, w in enumerate(arc_words)}
    arc_cos = audio @ arc_emb.T
    rival = torch.stack([arc_cos[i, [index[w] for w in own[sp]]].max() for i, sp in enumerate(spans)])
    lead = ((audio @ vocab_emb.T) - rival[:, None]).max(0).values
    order = torch.argsort(lead, descending=True)[:k].tolist()
    return [words[j] for j in order if float(lead[j]) >= margin]


def ctc_candidates(log_probs, trie, k: int):
    """At most ``k`` list words the CTC word spotter finds in the utterance (its non-overlapping hits,
    ``SpottingConfig()``), each word once, by its best hit's score."""
    from rescorer.decoding.word_spotting import spot

    best = {}
    for h in spot(log_probs, trie):
        best[h.word] = max(best.get(h.word, float("-inf")), h.score)
    return sorted(best, key=lambda w: (-best[w], w))[:k]


def count(hyp, ref, base, list_words, min_letters: int) -> dict:
    ref_c = Counter(ref)
    got = Counter(w for w in hyp if w in list_words and len(w) >= min_letters)
    had = Counter(w for w in base if w in list_words and len(w) >= min_letters)
    out = Counter()
    for w, n in got.items():
        right = min(n, ref_c.get(w, 0))
        out["right"] += right
        out["wrong"] += n - right
        new = max(0, n - had.get(w, 0))  # the copies the prompt added
        new_right = max(0, min(new, right - min(had.get(w, 0), ref_c.get(w, 0))))
        out["new_right"] += new_right
        out["new_wrong"] += new - new_right
    return dict(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a speechocean762 recipe run (exp/ with the embedder, lattices, lists)")
    p.add_argument("--corpus", required=True, help="the entry name in --out")
    p.add_argument("--cuts", default="data/speechocean762/manifests/speechocean762_cuts_dev.jsonl.gz")
    p.add_argument("--context-list", default="exp/word_lists/context_dev.txt")
    p.add_argument("--sources", default=",".join(SOURCES))
    p.add_argument("--words", type=int, default=20, help="prompt words per utterance")
    p.add_argument("--min-letters", type=int, default=4, help="list words counted (the recipes' oov_min_letters)")
    p.add_argument("--margin-words", type=int, default=3, help="the margin source's most prompt words")
    p.add_argument("--margin", type=float, default=0.1, help="... and the least lead over the arc words' cosine")
    p.add_argument("--ctc-log-probs", default="exp/decode_dev_ctc/ctc_log_probs.pt",
                   help="the ctc source's log-probs (the decoder's, rescorer decode)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-utterances", type=int, default=0, help="0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "whisper_prompt_bias.json"))
    a = p.parse_args(argv)
    out_path = Path(a.out).resolve()
    command = shlex.join(["python", "benchmarks/whisper_prompt_bias.py"] + (argv or sys.argv[1:]))
    os.chdir(a.workdir)
    import torch
    import torch.nn.functional as F
    from lhotse import load_manifest
    from tqdm import tqdm

    from rescorer.formats.utterances import read_utterance_features
    from rescorer.formats.word_lattices import read_word_lattices
    from rescorer.formats.word_list import read_word_list
    from rescorer.models.whisper_text import WhisperTextScorer
    from rescorer.rescore import Rescorer
    from rescorer.text import words_of

    sources = [x for x in a.sources.split(",") if x]
    unknown = set(sources) - set(SOURCES)
    if unknown or "none" not in sources:
        p.error(f"--sources: from {', '.join(SOURCES)}, with none (the new words are counted against it); got {a.sources}")
    torch.set_num_threads(a.threads)
    list_words = list(read_word_list(a.context_list))
    in_list = set(list_words)
    cuts = list(load_manifest(a.cuts))
    if a.max_utterances:
        cuts = cuts[:a.max_utterances]
    scorer = WhisperTextScorer(None, threads=a.threads)
    rng = random.Random(a.seed)
    if "embedder" in sources or "margin" in sources:
        rescorer = Rescorer.from_dir("exp/embeddings")
        feats = read_utterance_features("exp/asr_data/dev.pt", expect=None).by_id()
        shard = read_word_lattices("exp/decode_dev_ctc/word_lattices.pt")
        lattices = {r.utterance_id: r for r in shard.records}
        id2word = {i: w for w, i in shard.words}
        vocab_emb = F.normalize(rescorer.spelling_embeddings(list_words).float().cpu(), dim=-1)
    if "ctc" in sources:
        from rescorer.decoding.word_spotting import SpellingTrie
        from rescorer.formats.ctc_log_probs import read_ctc_log_probs

        try:
            ctc = read_ctc_log_probs(a.ctc_log_probs).log_probs
            trie = SpellingTrie(list_words)
        except (OSError, ValueError) as e:  # a missing or malformed file; a word the CTC tokens cannot spell
            p.error(f"the ctc source: {e}")
    totals = {s: Counter() for s in sources}
    for c in tqdm(cuts, desc="prompted transcripts"):
        ref = words_of(" ".join(s.text or "" for s in c.supervisions))
        audio = c.load_audio()
        enc = scorer.encode(audio.mean(axis=0) if audio.ndim == 2 else audio.reshape(-1), c.sampling_rate)
        own = [w for w in ref if w in in_list]
        prompts = {"none": [], "random": rng.sample(list_words, a.words),
                   "oracle": own[:a.words] + rng.sample(list_words, max(0, a.words - len(own)))}
        if "embedder" in sources:
            rec = lattices.get(c.id)
            prompts["embedder"] = embedder_candidates(rescorer, feats[c.id], rec, list_words, vocab_emb, a.words) \
                if rec is not None and c.id in feats else []
        if "margin" in sources:
            rec = lattices.get(c.id)
            prompts["margin"] = margin_candidates(rescorer, feats[c.id], rec, id2word, list_words, vocab_emb,
                                                  a.margin_words, a.margin) if rec is not None and c.id in feats else []
            totals["margin"]["prompt_words"] += len(prompts["margin"])
        if "ctc" in sources:
            prompts["ctc"] = ctc_candidates(ctc[c.id], trie, a.words) if c.id in ctc else []
            totals["ctc"]["prompt_words"] += len(prompts["ctc"])
        hyps = {}
        for s in sources:
            words = list(prompts[s])
            rng.shuffle(words)
            hyps[s] = scorer.transcribe(enc, beam_size=a.beam_size, prompt=words)
            totals[s].update(count(hyps[s], ref, hyps["none"], in_list, a.min_letters))
            prompted = set(words)
            totals[s]["prompted_reference_tokens"] += sum(1 for w in ref if w in prompted)
        totals["none"]["reference_list_tokens"] += len(own)
    result = {s: dict(sorted(t.items())) for s, t in totals.items()}
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    doc[a.corpus] = {
        "sources": result, "utterances": len(cuts), "prompt_words": a.words, "min_letters": a.min_letters,
        "beam_size": a.beam_size, "context_list": a.context_list, "context_list_size": len(list_words),
        **({"margin_words": a.margin_words, "margin": a.margin} if "margin" in sources else {}),
        **({"ctc_log_probs": a.ctc_log_probs} if "ctc" in sources else {}),
        "command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": _dt.date.today().isoformat(),
    }
    out_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    for s, t in result.items():
        print(s, t)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
