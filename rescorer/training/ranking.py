"""Joint ranking loss for acoustic and letter-n-gram word embeddings.

Both encoders output unit vectors; a segment and a spelling are scored by cosine.
The loss has two hinge ranking terms with margin m (after Bengio & Heigold 2014, who
trained the spelling embedding to rank the true word's audio embedding above others):

- audio -> spelling: for segment a of word w, every other spelling v in the candidate
  set should score at least m below w: hinge(m - cos(a, w) + cos(a, v)).
- spelling -> audio: for spelling w, every segment b of another word in the batch
  should score at least m below each segment a of w: hinge(m - cos(a, w) + cos(b, w)).

Candidates are the batch's own words (in-batch negatives) plus hard negatives: for each
segment, the K wrong spellings that score highest among a pool of the training
vocabulary (the whole vocabulary when it fits in ``mining_pool``, else a seeded random
sample), found without gradients, then embedded again with gradients. All mined words
are shared candidates for every segment of the batch.

Near negatives (``near_negatives`` = N > 0): for every word of the batch, up to N
vocabulary words one or two letter or phone edits away (``rescorer.training.near_negatives``;
seeded choice when there are more) join the candidates too, so "cap" is ranked below
"cat" for the audio of "cat" even before the model confuses them.

Each anchor's hinge terms are averaged over its *violating* negatives only, so many
easy negatives do not dilute the gradient of the few hard ones.

Duplicates: negatives are decided by word identity, never by position. Two segments of
the same word in a batch are not negatives of each other, and a word that appears both
as a batch word and as a mined negative is one candidate, the positive.

Optional auxiliary loss (``aux_weight`` > 0): word classification over the training
vocabulary from the acoustic embedding, as the original paper trained its acoustic
network (a softmax over words). Here it is a cosine softmax: logits are
``aux_scale * cos(audio, class_vector)`` so the auxiliary head shapes the same
normalised space the ranking loss uses.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.acoustic import AcousticWordEncoder
from rescorer.models.letters import LetterNgramEncoder, select_bags
from rescorer.training.near_negatives import near_negative_table


def hinge_active_mean(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-anchor hinge loss averaged over violating negatives.

    pos [B], neg [B, M] similarities; neg_mask [B, M] True where the entry is a negative.
    Returns [B]; an anchor without negatives or without violations contributes 0.
    """
    h = (margin - pos[:, None] + neg).clamp(min=0) * neg_mask
    active = (h > 0).sum(dim=1).clamp(min=1)
    return h.sum(dim=1) / active


def joint_ranking_loss(
    audio: torch.Tensor,
    spellings: torch.Tensor,
    audio_words: torch.Tensor,
    spelling_words: torch.Tensor,
    margin: float = 0.4,
) -> Dict[str, torch.Tensor]:
    """Two-way hinge ranking loss on cosine similarities.

    audio [B, D] and spellings [U, D] unit vectors; audio_words [B] and spelling_words [U]
    are word identities (e.g. vocabulary ids). Every segment's word must occur among
    spelling_words. Returns {"audio_to_spelling", "spelling_to_audio"} (scalars).
    Computed in float32 even under autocast.
    """
    device_type = audio.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        audio = audio.float()
        spellings = spellings.float()
        sims = audio @ spellings.T  # [B, U]
        is_pos = audio_words[:, None] == spelling_words[None, :]
        if not bool(is_pos.any(dim=1).all()):
            raise ValueError("joint_ranking_loss: a segment's word is missing from the spellings")
        # the positive column of each segment (the first, if a word were listed twice)
        pos_col = is_pos.float().argmax(dim=1)
        pos = sims.gather(1, pos_col[:, None]).squeeze(1)
        a2s = hinge_active_mean(pos, sims, ~is_pos, margin)
        # spelling -> audio: anchor = spelling of segment b's word; negatives = segments
        # b' of other words, scored against that spelling: sims[b', pos_col[b]]
        cross = sims[:, pos_col].T  # [b, b'] = cos(audio b', spelling of word(b))
        other_word = audio_words[:, None] != audio_words[None, :]
        s2a = hinge_active_mean(pos, cross, other_word, margin)
    return {"audio_to_spelling": a2s.mean(), "spelling_to_audio": s2a.mean()}


@torch.no_grad()
def mine_hard_negatives(
    audio: torch.Tensor,
    audio_words: torch.Tensor,
    pool_emb: torch.Tensor,
    pool_words: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """For each segment, the ``k`` highest-scoring pool words other than its own: [B, k].

    audio [B, D], pool_emb [P, D] unit vectors; pool_words [P] word ids of the pool
    rows. Returns word ids (k is capped at P - 1).
    """
    sims = audio.float() @ pool_emb.float().T
    sims = sims.masked_fill(audio_words[:, None] == pool_words[None, :], float("-inf"))
    k = min(k, max(len(pool_words) - 1, 0))
    if k == 0:
        return torch.empty(len(audio), 0, dtype=torch.long, device=audio.device)
    return pool_words[sims.topk(k, dim=1).indices]


class JointEmbeddingModel(nn.Module):
    """Both encoders plus the loss; ``forward`` returns the losses of one batch.

    Everything a training step computes is inside ``forward`` (mining included), so
    the whole model can be wrapped in DistributedDataParallel. ``vocabulary`` is the
    training split's word list (segments' word ids index it); it is tokenized once.
    """

    def __init__(
        self,
        acoustic: AcousticWordEncoder,
        letters: LetterNgramEncoder,
        vocabulary: Sequence[str],
        margin: float = 0.4,
        hard_negatives: int = 8,
        mining_pool: int = 8192,
        aux_weight: float = 0.0,
        aux_scale: float = 16.0,
        near_negatives: int = 0,
        near_table: Optional[List[List[int]]] = None,
        pronouncer=None,
    ):
        """``near_table[i]``: vocabulary indices near word i; computed from the vocabulary's
        letters and phones (the spelling encoder's pronouncer, else the shared one) when
        ``near_negatives`` > 0 and no table is given (phones from ``pronouncer``, else the spelling
        encoder's, else the shared CMUdict + espeak-ng one)."""
        super().__init__()
        if acoustic.dim != letters.dim:
            raise ValueError(f"encoder dims differ: acoustic {acoustic.dim}, letters {letters.dim}")
        self.acoustic = acoustic
        self.letters = letters
        self.vocabulary = list(vocabulary)
        self.margin = margin
        self.hard_negatives = hard_negatives
        self.mining_pool = mining_pool
        self.aux_weight = aux_weight
        self.aux_scale = aux_scale
        # Plain attributes, not buffers: DDP would otherwise broadcast them every step.
        self._vocab_ids, self._vocab_offsets = letters.tokenize(self.vocabulary)
        if near_negatives < 0:
            raise ValueError(f"near_negatives must be >= 0, got {near_negatives}")
        self.near_negatives = near_negatives
        self._near_flat = self._near_offsets = None
        if near_negatives > 0:
            if near_table is None:
                from rescorer.pronunciation import get_pronouncer

                pronouncer = pronouncer or getattr(letters, "pronouncer", None) or get_pronouncer()
                near_table = near_negative_table(self.vocabulary, pronouncer.pronounce_many(self.vocabulary))
            if len(near_table) != len(self.vocabulary):
                raise ValueError(f"near_table has {len(near_table)} rows for {len(self.vocabulary)} words")
            self._near_flat = torch.tensor([j for row in near_table for j in row], dtype=torch.long)
            self._near_offsets = torch.tensor([0] + [len(r) for r in near_table], dtype=torch.long).cumsum(0)
        self.aux_classes: Optional[nn.Parameter] = None
        if aux_weight > 0:
            self.aux_classes = nn.Parameter(torch.randn(len(self.vocabulary), acoustic.dim) * 0.02)

    def _vocab_bags(self, index: torch.Tensor, device: torch.device):
        if self._vocab_ids.device != device:
            self._vocab_ids = self._vocab_ids.to(device)
            self._vocab_offsets = self._vocab_offsets.to(device)
        return select_bags(self._vocab_ids, self._vocab_offsets, index.to(device))

    def embed_vocabulary_words(self, index: torch.Tensor) -> torch.Tensor:
        """Letter embeddings of training-vocabulary words ``index`` (grad if enabled)."""
        device = self.letters.ngrams.weight.device
        return self.letters(*self._vocab_bags(index, device))

    def mining_candidates(self, generator: torch.Generator) -> torch.Tensor:
        v = len(self.vocabulary)
        if v <= self.mining_pool:
            return torch.arange(v)
        return torch.randperm(v, generator=generator)[: self.mining_pool]

    def near_negatives_of(self, words: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Up to ``near_negatives`` near neighbours of each word id in ``words`` (seeded choice), flat."""
        if self._near_flat is None:
            return torch.empty(0, dtype=torch.long)
        picked = []
        for w in words.tolist():
            start, end = int(self._near_offsets[w]), int(self._near_offsets[w + 1])
            if end - start > self.near_negatives:
                choice = torch.randperm(end - start, generator=generator)[: self.near_negatives]
                picked.append(self._near_flat[start + choice])
            else:
                picked.append(self._near_flat[start:end])
        return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        word_ids: torch.Tensor,
        mining_seed: int = 0,
    ) -> Dict[str, torch.Tensor]:
        device = feats.device
        word_ids = word_ids.to(device)
        audio = self.acoustic(feats, lengths)
        batch_words = torch.unique(word_ids)
        mined = torch.empty(0, dtype=torch.long, device=device)
        if self.hard_negatives > 0 and len(self.vocabulary) > 1:
            pool = self.mining_candidates(torch.Generator().manual_seed(int(mining_seed))).to(device)
            with torch.no_grad():
                pool_emb = self.embed_vocabulary_words(pool)
                mined = mine_hard_negatives(audio.detach(), word_ids, pool_emb, pool, self.hard_negatives)
        near = self.near_negatives_of(batch_words, torch.Generator().manual_seed(int(mining_seed) + 1)).to(device)
        candidates = torch.unique(torch.cat([batch_words, mined.reshape(-1), near]))
        spellings = self.embed_vocabulary_words(candidates)
        losses = joint_ranking_loss(audio, spellings, word_ids, candidates, self.margin)
        loss = losses["audio_to_spelling"] + losses["spelling_to_audio"]
        if self.aux_classes is not None:
            with torch.autocast(device_type=device.type, enabled=False):
                logits = self.aux_scale * audio.float() @ F.normalize(self.aux_classes.float(), dim=-1).T
                aux = F.cross_entropy(logits, word_ids)
            losses["word_classification"] = aux
            loss = loss + self.aux_weight * aux
        losses["loss"] = loss
        losses["num_candidates"] = torch.tensor(float(len(candidates)))
        if self.near_negatives > 0:
            losses["num_near_negatives"] = torch.tensor(float(len(torch.unique(near))))
        return losses
