"""The file layer: the feature contract and one module per project file format.

The lowest layer of the package (it imports torch, json, the standard library and
``rescorer.text`` / ``tokens`` / ``utils`` only), so that decoding, lattices, rescoring,
evaluation and training all read and write files the same way:

- ``contract``: the feature contract (80-bin fbank, 10 ms, 16 kHz, x4 subsampling,
  ``<unk>``) and ``FeatureSpec`` / ``check_spec`` for frame rates files record;
- ``frames``: padded gathering and per-bin statistics over concatenated frames;
- ``tagged``: the tagged-file helper (format tag + plain tensors + JSON metadata,
  written atomically, loaded without unpickling objects: ``UnsafeFileError``);
- ``utterances`` (``rescorer.utterances``), ``word_segments`` (``rescorer.word_segments``),
  ``token_lattices`` (``rescorer.token_lattices``), ``word_lattices``
  (``rescorer.word_lattices``): each format's reader and writer side by side.
"""

from rescorer.formats.contract import (  # noqa: F401
    FBANK,
    LATTICE_FRAME_SHIFT,
    MIN_INPUT_FRAMES,
    SAMPLE_RATE,
    SUBSAMPLING_FACTOR,
    UNK,
    FeatureSpec,
    FeatureSpecError,
    check_frame_shift,
    check_spec,
)
from rescorer.formats.tagged import FormatError, UnsafeFileError, load_plain, read_tagged, write_tagged  # noqa: F401
