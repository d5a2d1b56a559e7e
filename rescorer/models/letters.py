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

Spelling views (``spelling_views``): ``letters`` (the above), ``phones`` or
``letters+phones``. The phone view derives ARPAbet phones from the spelling
(``rescorer.pronunciation``: CMUdict, else espeak-ng G2P), so a word still embeds from its
spelling alone, and adds phone n-grams, n = 1..3 with begin/end marks ("<", "K AE",
"T >"), to the same bag. Words that sound alike then share most of their n-grams whatever
their spelling, which is what the acoustic side hears (phones on the written side
generalise better than letters: Hu, Settle & Livescu 2020). Phone n-grams are not hashed:
the inventory is closed (39 phones + 2 marks), so each n-gram has its own row, in a block
of the table after the letter buckets; the two views can never share a row. The view and
the pronunciation source (dictionary sha256, espeak-ng version) are recorded in the
encoder's config, hence in checkpoints; a different source at loading time is warned
about (``PronunciationMismatchWarning``). Checkpoints without a view load as letters.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.registry import SPELLING_ENCODERS
from rescorer.pronunciation import PHONES, Pronouncer, get_pronouncer
from rescorer.text import BOW, EOW, letter_ngrams, normalize_word

DEFAULT_NUM_BUCKETS = 2**18
SPELLING_VIEWS = ("letters", "phones", "letters+phones")
# phone n-gram symbols: the word marks, then the 39 ARPAbet phones
PHONE_SYMBOLS: Tuple[str, ...] = (BOW, EOW) + PHONES
_PHONE_ID = {p: i for i, p in enumerate(PHONE_SYMBOLS)}
MAX_PHONE_N = 3  # exact rows: 41 + 41^2 + 41^3 = 70,643; a 4-gram block would add 2.8M


def check_view(view: str) -> str:
    """``view`` if it names a spelling view, else a ValueError listing them."""
    if view not in SPELLING_VIEWS:
        raise ValueError(f"unknown spelling view {view!r}; choose one of {', '.join(SPELLING_VIEWS)}")
    return view


def phone_rows(n_max: int = MAX_PHONE_N) -> int:
    """Table rows of every phone n-gram with n <= n_max (one row each, no hashing)."""
    return sum(len(PHONE_SYMBOLS) ** n for n in range(1, n_max + 1))


def phone_ngram_ids(phones: Sequence[str], n_min: int = 1, n_max: int = MAX_PHONE_N) -> List[int]:
    """Row (within the phone block) of each n-gram of ``< phones >``; bare marks are not n-grams.

    An n-gram's row is its symbols read as a base-41 number, after the rows of all shorter
    n-grams, so distinct n-grams never share a row.
    """
    try:
        seq = [0] + [_PHONE_ID[p] for p in phones] + [1]
    except KeyError as e:
        raise ValueError(f"phone {e.args[0]!r} is not an ARPAbet phone (in {' '.join(phones)!r})") from None
    base = len(PHONE_SYMBOLS)
    ids: List[int] = []
    start = 0
    for n in range(1, n_max + 1):
        if n >= n_min:
            for i in range(len(seq) - n + 1):
                if n == 1 and seq[i] < 2:
                    continue
                code = 0
                for s in seq[i : i + n]:
                    code = code * base + s
                ids.append(start + code)
        start += base**n
    return ids


def ngram_bucket(gram: str, num_buckets: int = DEFAULT_NUM_BUCKETS) -> int:
    """Stable bucket of one letter n-gram: CRC-32 of its UTF-8 bytes modulo num_buckets."""
    return zlib.crc32(gram.encode("utf-8")) % num_buckets


def tokenize_words(
    words: Sequence[str],
    num_buckets: int = DEFAULT_NUM_BUCKETS,
    n_min: int = 1,
    n_max: int = 5,
    normalize: bool = True,
    views: str = "letters",
    phone_n_min: int = 1,
    phone_n_max: int = MAX_PHONE_N,
    pronouncer: Optional[Pronouncer] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """N-gram rows of many words as (flat ids [N] int64, offsets [V + 1] int64).

    Word v's ids are ``ids[offsets[v]:offsets[v + 1]]``: its hashed letter n-grams (rows
    [0, num_buckets)) when ``views`` has letters, then its phone n-grams (rows after the
    letter block, or from 0 for ``phones`` alone) when it has phones, pronounced by
    ``pronouncer`` (default: the shared CMUdict + espeak-ng one). This is the pure-Python
    part of encoding (about 1-2 s per 100k words for letters); training tokenizes its
    vocabulary once and selects words from these tensors with ``select_bags``.
    """
    check_view(views)
    use_letters = views != "phones"
    clean = [normalize_word(w) for w in words] if normalize else list(words)
    phone_ids: Optional[List[List[int]]] = None
    if views != "letters":
        pronouncer = pronouncer or get_pronouncer()
        offset = num_buckets if use_letters else 0
        phone_ids = [
            [offset + i for i in phone_ngram_ids(p, phone_n_min, phone_n_max)]
            for p in pronouncer.pronounce_many(clean, normalize=False)
        ]
    crc = zlib.crc32
    flat: List[int] = []
    offsets = [0]
    for v, w in enumerate(clean):
        if use_letters:
            flat.extend(crc(g.encode("utf-8")) % num_buckets for g in letter_ngrams(w, n_min, n_max))
        if phone_ids is not None:
            flat.extend(phone_ids[v])
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
        spelling_views: str = "letters",
        phone_n_min: int = 1,
        phone_n_max: int = MAX_PHONE_N,
        lexicon: Optional[str] = None,
        g2p: str = "espeak",
        pronunciation: Optional[Dict[str, Any]] = None,
    ):
        """``pronunciation``: the source recorded when the model was trained (``Pronouncer.source()``);
        None for a new model, which then records the one it uses."""
        super().__init__()
        check_view(spelling_views)
        if not 1 <= phone_n_min <= phone_n_max <= MAX_PHONE_N:
            raise ValueError(f"phone n-gram orders must satisfy 1 <= min <= max <= {MAX_PHONE_N}, "
                             f"got {phone_n_min}..{phone_n_max}")
        self.dim = dim
        self.num_buckets = num_buckets
        self.n_min = n_min
        self.n_max = n_max
        self.spelling_views = spelling_views
        self.phone_n_min = phone_n_min
        self.phone_n_max = phone_n_max
        self.pronouncer: Optional[Pronouncer] = None
        rows = 0 if spelling_views == "phones" else num_buckets
        if spelling_views != "letters":
            rows += phone_rows(phone_n_max)
            self.pronouncer = get_pronouncer(lexicon, g2p)
            if pronunciation is None:
                pronunciation = self.pronouncer.source()
            else:
                self.pronouncer.check_source(pronunciation)
        self.config: Dict[str, object] = dict(
            dim=dim, num_buckets=num_buckets, ngram_dim=ngram_dim, hidden=hidden, n_min=n_min, n_max=n_max
        )
        if spelling_views != "letters":  # letters-only configs stay as they were (old checkpoints)
            self.config.update(spelling_views=spelling_views, phone_n_min=phone_n_min, phone_n_max=phone_n_max,
                               lexicon=lexicon, g2p=g2p, pronunciation=pronunciation)
        self.ngrams = nn.EmbeddingBag(rows, ngram_dim, mode="sum")
        nn.init.normal_(self.ngrams.weight, std=1.0 / math.sqrt(ngram_dim))
        self.norm = nn.LayerNorm(ngram_dim)
        self.mlp = nn.Sequential(nn.Linear(ngram_dim, hidden), nn.GELU(), nn.Linear(hidden, ngram_dim))
        self.proj = nn.Linear(ngram_dim, dim)

    @classmethod
    def from_config(cls, config: Dict[str, object]) -> "LetterNgramEncoder":
        return cls(**config)

    def tokenize(self, words: Sequence[str], normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids, offsets) of ``words`` in this encoder's view and hashing; see ``tokenize_words``."""
        return tokenize_words(words, self.num_buckets, self.n_min, self.n_max, normalize, self.spelling_views,
                              self.phone_n_min, self.phone_n_max, self.pronouncer)

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
        used = torch.zeros(self.ngrams.num_embeddings, dtype=torch.bool, device=self.ngrams.weight.device)
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
