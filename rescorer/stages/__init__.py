"""Pipeline stages as package functions; ``rescorer <verb>`` (rescorer.cli) is their one way in.

One module per stage, each a function of plain arguments that a recipe step runs:

- ``segments``: fbank features for every cut and the word segments (``rescorer segments``).
- ``export_asr``: utterance features + transcripts for ASR training and rescoring (``rescorer export-asr``).
- ``rescore``: sharded, resumable rescoring of a lattice file or directory (``rescorer rescore``).
- ``tune``: scale tuning on dev (or cross-validation over dev speakers), report on held-out
  data, and the tuned scales written beside the embedder (``rescorer tune``).
- ``transcribe``: Whisper's 1-best per cut, as a transcript file for the second-recogniser
  methods of ``tune`` (``rescorer transcribe``).
- ``word_lists``: the large and context word lists for OOV recovery, as files (``rescorer word-lists``).
- ``collect_wer``: the decoders' results merged into a WER file (``rescorer wer collect``).
- ``evaluate_embeddings``: an embedder's P@1 / AP on one split into a JSON file (``rescorer evaluate embeddings``).

Training, graph building and decoding keep their own ``main(argv)`` in their packages;
the CLI passes arguments through to them. Heavy libraries (k2, lhotse) are imported
inside the functions, so importing a stage module costs nothing.
"""


class StageError(Exception):
    """Bad input to a stage (a missing manifest, a malformed option); the message names it."""
