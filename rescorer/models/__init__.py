"""Embedding models: audio of one word and the spelling of a word map to the same space.

- ``AcousticWordEncoder``: log-mel frames of one word segment -> unit vector.
- ``StatePoolingEncoder``: a pretrained frontend's states over a word's span -> unit
  vector (frame-local layers + span pooling: one pass per utterance at rescoring time).
- ``LetterNgramEncoder``: a spelling (any string of letters, OOV included) -> unit vector.

Cosine similarity between the two scores how well a segment matches a spelling.

Inference depends on the interfaces these implement (``interfaces.AcousticEncoder``,
``interfaces.SpellingEncoder``); classes are chosen by name (``registry``) when a
checkpoint is loaded (``checkpoint.load_embedder``, ``checkpoint.load_asr_model``).
"""

from rescorer.models.acoustic import AcousticWordEncoder, center_crop, pad_segments
from rescorer.models.letters import LetterNgramEncoder, ngram_bucket, tokenize_words
from rescorer.models.state_pooling import StatePoolingEncoder

__all__ = [
    "AcousticWordEncoder",
    "LetterNgramEncoder",
    "StatePoolingEncoder",
    "center_crop",
    "ngram_bucket",
    "pad_segments",
    "tokenize_words",
]
