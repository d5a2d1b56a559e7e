"""Letter-n-gram word encoder: a spelling -> L2-normalised D-dim vector, for any word.

A word is normalised with ``rescorer.text.normalize_word`` (case folding, accents
stripped, typographic apostrophes unified; non-words such as "1984" raise
``NotAWordError``), so "Café", "CAFE" and "cafe" get the same embedding, the one the
transcripts, lattice symbol tables and word lists all agree on. The spelling is split
into letter n-grams, n = 1..5, with begin/end marks (``rescorer.text.letter_ngrams``:
"<ca", "afe>", ...). Each n-gram is hashed into one of ``num_buckets`` rows of an
embedding table; the rows are summed (weights 1/sqrt(number of n-grams), so short and
long words start at comparable norms), passed through a small residual MLP and
L2-normalised.

Hashing is CRC-32 of the UTF-8 bytes (``zlib.crc32``): stable across processes,
machines and Python versions, unlike ``hash()``, which is salted per process; a model
trained in one process must map "<ca" to the same row when rescoring in another. With
2^18 buckets of 128 dims (33.5M parameters, 134 MB), the few collisions between
rare n-grams are absorbed by the other n-grams of each word. Any string of letters has
n-grams, so out-of-vocabulary words embed.
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.registry import SPELLING_ENCODERS
from rescorer.text import letter_ngrams, normalize_word

DEFAULT_NUM_BUCKETS = 2**18


def ngram_bucket(gram: str, num_buckets: int = DEFAULT_NUM_BUCKETS) -> int:
    """Stable bucket of one letter n-gram: CRC-32 of its UTF-8 bytes modulo num_buckets."""
    return zlib.crc32(gram.encode("utf-8")) % num_buckets


def tokenize_words(
    words: Sequence[str],
    num_buckets: int = DEFAULT_NUM_BUCKETS,
    n_min: int = 1,
    n_max: int = 5,
    normalize: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hashed n-gram ids of many words as (flat ids [N] int64, offsets [V + 1] int64).

    Word v's ids are ``ids[offsets[v]:offsets[v + 1]]``. This is the pure-Python part
    of encoding (about 1-2 s per 100k words); training tokenizes its vocabulary once and
    selects words from these tensors with ``select_bags``.
    """
    crc = zlib.crc32
    flat: List[int] = []
    offsets = [0]
    for w in words:
        if normalize:
            w = normalize_word(w)
        flat.extend(crc(g.encode("utf-8")) % num_buckets for g in letter_ngrams(w, n_min, n_max))
        offsets.append(len(flat))
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def select_bags(
    ids: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The bags of words ``index`` (into a tokenized vocabulary) as (ids, offsets [K + 1])."""
    index = index.to(offsets.device, torch.long)
    starts = offsets[index]
    counts = offsets[index + 1] - starts
    new_offsets = torch.zeros(len(index) + 1, dtype=torch.long, device=offsets.device)
    new_offsets[1:] = torch.cumsum(counts, 0)
    total = int(new_offsets[-1])
    # position of each output element inside its bag, then absolute source position
    bag_of = torch.repeat_interleave(torch.arange(len(index), device=offsets.device), counts)
    within = torch.arange(total, device=offsets.device) - new_offsets[:-1][bag_of]
    return ids[starts[bag_of] + within], new_offsets


@SPELLING_ENCODERS.register("letter_ngram")
class LetterNgramEncoder(nn.Module):
    """Spellings -> unit vectors [V, dim] via hashed letter n-grams, EmbeddingBag and MLP.

    Implements ``rescorer.models.interfaces.SpellingEncoder`` (registry name ``"letter_ngram"``).
    """

    def __init__(
        self,
        dim: int = 256,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
        ngram_dim: int = 128,
        hidden: int = 512,
        n_min: int = 1,
        n_max: int = 5,
    ):
        super().__init__()
        self.config: Dict[str, object] = dict(
            dim=dim, num_buckets=num_buckets, ngram_dim=ngram_dim, hidden=hidden, n_min=n_min, n_max=n_max
        )
        self.dim = dim
        self.num_buckets = num_buckets
        self.n_min = n_min
        self.n_max = n_max
        self.ngrams = nn.EmbeddingBag(num_buckets, ngram_dim, mode="sum")
        nn.init.normal_(self.ngrams.weight, std=1.0 / math.sqrt(ngram_dim))
        self.norm = nn.LayerNorm(ngram_dim)
        self.mlp = nn.Sequential(nn.Linear(ngram_dim, hidden), nn.GELU(), nn.Linear(hidden, ngram_dim))
        self.proj = nn.Linear(ngram_dim, dim)

    @classmethod
    def from_config(cls, config: Dict[str, object]) -> "LetterNgramEncoder":
        return cls(**config)

    def tokenize(self, words: Sequence[str], normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids, offsets) of ``words`` with this encoder's hashing; see ``tokenize_words``."""
        return tokenize_words(words, self.num_buckets, self.n_min, self.n_max, normalize)

    @torch.no_grad()
    def zero_untrained_buckets_(self, words: Sequence[str]) -> int:
        """Zero the table rows that no n-gram of ``words`` (the training vocabulary) hashes to.

        Training only ever embeds training-vocabulary spellings, so the other rows keep
        their random initialisation and add pure noise to the spelling of an unseen word
        (on the synthetic dev split this noise cost a third of the OOV P@1). Zeroed, an
        unknown n-gram contributes nothing. Training is unaffected by the call (those rows
        get no gradient). Returns the number of rows kept.
        """
        ids, _ = self.tokenize(list(words))
        used = torch.zeros(self.num_buckets, dtype=torch.bool, device=self.ngrams.weight.device)
        used[ids.to(used.device)] = True
        self.ngrams.weight[~used] = 0
        return int(used.sum())

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bags given as flat ids [N] and offsets [V + 1] (last = N) -> [V, dim] unit vectors."""
        device = self.ngrams.weight.device
        ids = ids.to(device)
        offsets = offsets.to(device)
        counts = (offsets[1:] - offsets[:-1]).clamp(min=1)
        bag_of = torch.repeat_interleave(torch.arange(len(counts), device=device), offsets[1:] - offsets[:-1])
        weights = counts.float().rsqrt()[bag_of]
        # include_last_offset=False API: pass the V start offsets
        pooled = self.ngrams(ids, offsets[:-1], per_sample_weights=weights)
        h = self.norm(pooled)
        h = h + self.mlp(h)
        return F.normalize(self.proj(h).float(), dim=-1)

    def encode_words(
        self,
        words: Sequence[str],
        chunk_size: int = 16384,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Embed spellings (normalised with ``normalize_word`` unless normalize=False): [V, dim].

        Works through the list in chunks of ``chunk_size`` words, so a 1M-word vocabulary
        needs only one chunk's activations at a time. Gradients flow when grad mode is on
        (training re-embeds hard negatives this way); wrap in ``torch.no_grad()`` for
        inference. The result lies on the encoder's device.
        """
        outs = []
        for start in range(0, len(words), chunk_size):
            ids, offsets = self.tokenize(words[start : start + chunk_size], normalize)
            outs.append(self(ids, offsets))
        if not outs:
            return torch.empty(0, self.dim, device=self.ngrams.weight.device)
        return torch.cat(outs)
