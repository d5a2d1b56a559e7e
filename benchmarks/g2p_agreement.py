#!/usr/bin/env python
"""How well espeak-ng's G2P, mapped to ARPAbet, agrees with CMUdict; and how fast pronunciations are.

    python benchmarks/g2p_agreement.py [--words 3000] [--seed 0] [--out results/g2p_agreement.json]

Agreement: ``--words`` words drawn (seeded) from the dictionary are pronounced by espeak-ng
(en-us) as if the dictionary lacked them, mapped with ``rescorer.pronunciation.arpabet``,
and aligned with CMUdict (kaldialign): phone error rate (substitutions + deletions +
insertions over CMUdict phones) against the first reading, and against the closest of
the word's readings; share of words pronounced exactly; the most frequent confusions.

Speed: words/s of ``Pronouncer.pronounce_many`` on the dictionary's words (lookups), of
the G2P path (one forked espeak-ng child per batch), and of a 100k-word list from
``large_word_list()`` when available (lookups plus G2P of the words CMUdict lacks), each
on a fresh Pronouncer so nothing is cached; and the dictionary's parse time.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import kaldialign  # noqa: E402

from rescorer.pronunciation import Pronouncer, load_lexicon  # noqa: E402
from rescorer.pronunciation.lexicon import _CACHE as _LEXICON_CACHE  # noqa: E402


def confusions(ref, hyp):
    """(ref phone, hyp phone) pairs of one alignment that differ ("*" = nothing)."""
    return [(r, h) for r, h in kaldialign.align(list(ref), list(hyp), "*") if r != h]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--words", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list-size", type=int, default=100_000, help="words of large_word_list() timed (0: skip)")
    p.add_argument("--out", default="results/g2p_agreement.json")
    args = p.parse_args(argv)

    _LEXICON_CACHE.clear()
    t0 = time.perf_counter()
    lexicon = load_lexicon()
    parse_s = time.perf_counter() - t0
    words = sorted(w for w in lexicon.entries if "'" not in w)
    sample = sorted(random.Random(args.seed).sample(words, min(args.words, len(words))))

    pron = Pronouncer()
    t0 = time.perf_counter()
    g2p = pron._g2p(sample)  # the G2P path on dictionary words, bypassing the dictionary
    g2p_s = time.perf_counter() - t0

    errors_first = errors_best = ref_first = ref_best = exact = 0
    conf = collections.Counter()
    for word, hyp in zip(sample, g2p):
        readings = lexicon.entries[word]
        first = kaldialign.edit_distance(list(readings[0]), list(hyp))["total"]
        errors_first += first
        ref_first += len(readings[0])
        best_ref = min(readings, key=lambda r: (kaldialign.edit_distance(list(r), list(hyp))["total"], len(r)))
        best = kaldialign.edit_distance(list(best_ref), list(hyp))["total"]
        errors_best += best
        ref_best += len(best_ref)
        exact += best == 0
        conf.update(confusions(best_ref, hyp))

    fresh = Pronouncer()
    t0 = time.perf_counter()
    fresh.pronounce_many(words)
    lookup_s = time.perf_counter() - t0

    big = None
    if args.list_size:
        try:
            from rescorer.corpora.text_sources import large_word_list

            listed = large_word_list()[: args.list_size]
        except Exception as e:  # noqa: BLE001 - the timing is optional
            print(f"skipping the word-list timing: {e}", file=sys.stderr)
            listed = []
        if listed:
            fresh = Pronouncer()
            t0 = time.perf_counter()
            fresh.pronounce_many(listed)
            s = time.perf_counter() - t0
            missing = sum(1 for w in listed if w not in lexicon.entries)
            big = {"words": len(listed), "not_in_dictionary": missing, "seconds": round(s, 3),
                   "words_per_s": round(len(listed) / s)}  # fmt: skip

    result = {
        "description": (
            "espeak-ng G2P (en-us) mapped to ARPAbet by rescorer.pronunciation.arpabet, against CMUdict "
            "(stress removed) on words the dictionary has; phone error rate = (S + D + I) / CMUdict phones. "
            "Speeds: Pronouncer.pronounce_many on a fresh instance (nothing cached)."
        ),
        "lexicon": lexicon.path.replace(str(Path(sys.prefix)), "$VENV"),
        "lexicon_sha256": lexicon.sha256,
        "lexicon_words": len(lexicon),
        "espeak_ng_version": pron.espeak_version(),
        "mapping": pron.source()["mapping"],
        "words": len(sample),
        "seed": args.seed,
        "per_vs_first_reading": round(errors_first / ref_first, 4),
        "per_vs_closest_reading": round(errors_best / ref_best, 4),
        "words_exact": round(exact / len(sample), 4),
        "top_confusions": [[f"{r}->{h}", n] for (r, h), n in conf.most_common(15)],
        "speed": {
            "lexicon_parse_s": round(parse_s, 3),
            "dictionary_lookup_words_per_s": round(len(words) / lookup_s),
            "g2p_words_per_s": round(len(sample) / g2p_s),
            "word_list": big,
        },
        "command": "python benchmarks/g2p_agreement.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("per_vs_first_reading", "per_vs_closest_reading", "words_exact")}))
    print(json.dumps(result["top_confusions"]))
    print(json.dumps(result["speed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
