"""k2 decoding side of the ASR baselines.

- ``lm``: interpolated modified Kneser-Ney n-gram estimator, ARPA I/O and validation,
  ARPA -> G (kaldilm, in a child process), LM texts per corpus.
- ``lexicon``: tokens.txt / words.txt, the letter lexicon L with the ``<unk>`` letter loop.
- ``graphs``: HLG compilation and the lang-dir builder (``rescorer graphs``).
- ``decode``: CTC greedy, HLG lattices with per-arc frames / AM / LM scores, 1-best,
  n-best, attention rescoring, lattice oracle, the decode CLI
  (``rescorer decode``).

File formats (token lattices, utterance features) are ``rescorer.formats``.

Nothing here imports k2 at module import time.
"""
