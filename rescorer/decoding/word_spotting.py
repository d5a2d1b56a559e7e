"""CTC word spotting over a word list (CTC-WS), after Andrusenko et al., Interspeech 2024.

A word list becomes a prefix tree of spellings in the CTC model's letter tokens, each
spelling ending with the word boundary ``|`` (the model emits it after every word, so a
spotted word must end where the model ends one). Spotting is token-synchronous Viterbi
over the tree in CTC topology, on one utterance's log-probs ``[T, V]``:

- every tree node has two states: *emitting* its token (self-loop: the token held over
  frames) and *blank after it*; a child is entered from either, except from the emitting
  state when both tokens are the same letter (CTC needs a blank between repeats);
- a new word may start on every frame (from the root) unless the blank's probability
  there exceeds ``blank_threshold`` or the first letter's is below ``min_start_prob``;
- each spelled token adds ``bonus`` (the paper's context-biasing weight; once per token,
  not per frame the token is held), so a hit's score is its path log-prob plus
  ``bonus`` x tokens; states more than ``beam`` below the frame's best are dropped, and at
  each state only the best path (with its start frame) is kept;
- entering the ``|`` leaf of a word is a *hit* (word, start frame, end frame, score) when
  the score exceeds ``threshold`` and is within the beam; overlapping hits keep the
  best-scoring ones (no two accepted hits share a frame).

The frontier is processed as tensors (active states, their children from a CSR child
table, a scatter-max per state), so a frame costs O(active states), not O(tree).

Replacement (``ctc_word_spotting``): the CTC greedy 1-best is split into words with
frame spans (first letter to its ``|``); a hit replaces the greedy words overlapping its
frames (at least ``min_overlap`` of a greedy word's frames inside the hit) only when its
score beats the greedy path's score over the same frames: the sum of the per-frame best
log-probs plus ``token_weight`` per greedy token started there. (NeMo compares with the
overlapping greedy words' own scores, which skip blank frames; comparing both paths over
identical frames is the same test made exact.)

Another decoder's 1-best (``base_words``: an HLG or pocketsphinx lattice's best path, its
word times put on CTC frames) can take the greedy words' place: the hits accepted are the
same (the test above is against the CTC model's best path, whatever is edited), and they
replace the base's words they overlap. This is CTC-WS as an add-on to any decoder, the
anchor for rescoring that decoder's lattices.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from rescorer.formats.word_list import WordListError
from rescorer.tokens import BLANK_ID, BOUNDARY_ID, TOKENS, TokenError, words_to_token_ids


def _quiet_scatter_reduce(fn):
    """Run ``fn`` without torch 1.13's "scatter_reduce is in beta" warning (its amax/amin and
    include_self semantics are stable since), leaving the caller's warning filters as they were."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"scatter_reduce\(\) is in beta")
            return fn(*args, **kwargs)

    return wrapped


@dataclass(frozen=True)
class SpottingConfig:
    beam: float = 7.0  # states further than this below the frame's best state are dropped
    bonus: float = 3.0  # added per spelled token (context-biasing weight)
    threshold: float = -5.0  # a hit's score (log-prob + bonuses) must exceed this
    token_weight: float = 0.5  # per greedy token, in the greedy path's score over a hit's frames
    blank_threshold: float = 0.8  # no word starts on a frame whose blank probability exceeds this
    min_start_prob: float = 0.001  # ... nor with a first letter less probable than this
    min_overlap: float = 0.5  # a greedy word goes when this share of its frames lies inside an accepted hit

    def __post_init__(self) -> None:
        if not (self.beam > 0 and 0 < self.blank_threshold <= 1 and 0 < self.min_start_prob <= 1 and 0 < self.min_overlap <= 1):
            raise ValueError(f"invalid spotting config {self}")


class SpottedWord(NamedTuple):
    word: str
    start: int  # CTC output frame of the first letter
    end: int  # one past the frame of its ``|``
    score: float  # path log-prob + bonus x tokens
    log_prob: float  # the path log-prob alone


class GreedyWord(NamedTuple):
    word: str
    start: int
    end: int  # exclusive


@dataclass
class SpottingResult:
    words: List[GreedyWord]  # the edited words after replacement, in time order
    greedy: List[GreedyWord]  # the words edited: the CTC greedy 1-best, or the base given
    hits: List[SpottedWord]  # spotted (non-overlapping) hits
    accepted: List[SpottedWord]  # hits that beat the greedy path and replaced its words

    @property
    def word_sequence(self) -> List[str]:
        return [w.word for w in self.words]


def spelling(word: str) -> List[int]:
    """The CTC token ids of a word: its letters, then ``|``."""
    if not word:
        raise WordListError("empty word in the word list")
    try:
        return words_to_token_ids([word])
    except TokenError as e:
        raise WordListError(f"word {word!r} cannot be spelled with the CTC model's tokens: {e}") from None


class SpellingTrie:
    """Prefix tree of the spellings (``spelling``) of a word list; node 0 is the root.

    Tensors over nodes: ``token`` (-1 at the root), ``parent``, ``word`` (the word-list
    index at a ``|`` leaf, else -1); children in CSR form (``child_ptr``, ``children``).
    """

    def __init__(self, words: Sequence[str]):
        words = list(dict.fromkeys(words))
        if not words:
            raise WordListError("the word list is empty")
        self.words = words
        token, parent, word_of = [-1], [-1], [-1]
        child: List[Dict[int, int]] = [{}]
        for i, w in enumerate(words):
            node = 0
            for tok in spelling(w):
                nxt = child[node].get(tok)
                if nxt is None:
                    nxt = len(token)
                    child[node][tok] = nxt
                    token.append(tok)
                    parent.append(node)
                    word_of.append(-1)
                    child.append({})
                node = nxt
            word_of[node] = i  # the | leaf: spellings end with | and | only ends one, so leaves are unique
        self.token = torch.tensor(token, dtype=torch.long)
        self.parent = torch.tensor(parent, dtype=torch.long)
        self.word = torch.tensor(word_of, dtype=torch.long)
        self.is_end = self.word >= 0
        self.num_tokens = torch.tensor([len(w) + 1 for w in words], dtype=torch.long)  # letters + |
        order = torch.argsort(self.parent[1:], stable=True) + 1  # non-root nodes grouped by parent
        self.children = order
        counts = torch.bincount(self.parent[1:], minlength=len(token))
        self.child_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])

    def __len__(self) -> int:
        return int(self.token.numel())

    def expand(self, nodes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(row, child): every child of every node in ``nodes``; ``row`` indexes ``nodes``."""
        lo, hi = self.child_ptr[nodes], self.child_ptr[nodes + 1]
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        row = torch.repeat_interleave(torch.arange(nodes.numel()), counts)
        first = torch.cumsum(counts, 0) - counts
        pos = lo[row] + torch.arange(total) - first[row]
        return row, self.children[pos]


def _reduce_max(keys: torch.Tensor, scores: torch.Tensor, starts: torch.Tensor):
    """Per distinct key (sorted): the best score and the start frame of the path that has it
    (the first such path where scores tie)."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    best = torch.full((uniq.numel(),), -math.inf).scatter_reduce(0, inv, scores, reduce="amax", include_self=True)
    n = keys.numel()
    idx = torch.arange(n)
    cand = torch.where(scores == best[inv], idx, torch.full_like(idx, n))
    first = torch.full((uniq.numel(),), n, dtype=torch.long).scatter_reduce(0, inv, cand, reduce="amin", include_self=True)
    return uniq, scores[first], starts[first]


@_quiet_scatter_reduce
def spot(log_probs: torch.Tensor, trie: SpellingTrie, config: SpottingConfig = SpottingConfig()) -> List[SpottedWord]:
    """Hits of the trie's words in one utterance's CTC log-probs ``[T, V]`` (module doc),
    non-overlapping, in time order."""
    lp = _check_log_probs(log_probs)
    T = lp.shape[0]
    c = config
    can_start = lp[:, BLANK_ID] <= math.log(c.blank_threshold)
    min_start = math.log(c.min_start_prob)
    root_row, root_children = trie.expand(torch.zeros(1, dtype=torch.long))
    root_tok = trie.token[root_children]
    tok, is_end = trie.token, trie.is_end
    # active states: key = 2 * node + kind (0: emitting the node's token, 1: blank after it)
    keys = torch.empty(0, dtype=torch.long)
    scores = torch.empty(0)
    starts = torch.empty(0, dtype=torch.long)
    hit_rows: List[torch.Tensor] = []
    for t in range(T):
        frame = lp[t]
        ck, cs, cst = [], [], []
        if keys.numel():
            node, kind = keys // 2, keys % 2
            emitting = kind == 0
            stay = torch.where(emitting, frame[tok[node]], frame[BLANK_ID].expand(node.shape))
            ck += [keys, keys[emitting] + 1]
            cs += [scores + stay, scores[emitting] + frame[BLANK_ID]]
            cst += [starts, starts[emitting]]
            row, ch = trie.expand(node)
            ok = ~emitting[row] | (tok[ch] != tok[node[row]])  # a repeated letter needs a blank between
            row, ch = row[ok], ch[ok]
            ck.append(2 * ch)
            cs.append(scores[row] + c.bonus + frame[tok[ch]])
            cst.append(starts[row])
        if bool(can_start[t]):
            g = frame[root_tok]
            ok = g >= min_start
            ck.append(2 * root_children[ok])
            cs.append(c.bonus + g[ok])
            cst.append(torch.full((int(ok.sum()),), t, dtype=torch.long))
        if not ck:
            continue
        K, S, ST = torch.cat(ck), torch.cat(cs), torch.cat(cst)
        if K.numel() == 0:
            keys, scores, starts = K, S, ST
            continue
        floor = float(S.max()) - c.beam
        hit = is_end[K // 2]
        if bool(hit.any()):
            h = hit & (S > c.threshold) & (S >= floor)
            if bool(h.any()):
                hit_rows.append(torch.stack([trie.word[K[h] // 2].double(), ST[h].double(),
                                             torch.full((int(h.sum()),), float(t), dtype=torch.float64), S[h].double()], 1))
            K, S, ST = K[~hit], S[~hit], ST[~hit]
        keys, scores, starts = _reduce_max(K, S, ST)
        keep = scores >= floor
        keys, scores, starts = keys[keep], scores[keep], starts[keep]
    if not hit_rows:
        return []
    rows = torch.cat(hit_rows)
    return _non_overlapping(rows, trie, c.bonus, T)


@_quiet_scatter_reduce
def spot_batch(log_probs: Sequence[torch.Tensor], trie: SpellingTrie, config: SpottingConfig = SpottingConfig()
               ) -> List[List[SpottedWord]]:
    """``spot`` of several utterances in one frame loop: the same hits (tested against ``spot``,
    the reference), at a fraction of the cost, since a frame's tensor operations serve every
    utterance at once. State keys carry the utterance (``(b * nodes + node) * 2 + kind``) and
    the beam is applied per utterance; an utterance's states end with its frames."""
    lps = [_check_log_probs(x) for x in log_probs]
    if not lps:
        return []
    B, V, N = len(lps), len(TOKENS), len(trie)
    lens = torch.tensor([x.shape[0] for x in lps], dtype=torch.long)
    T = int(lens.max())
    lp = torch.zeros(B, T, V)
    for b, x in enumerate(lps):
        lp[b, : x.shape[0]] = x
    c = config
    live = torch.arange(T)[None, :] < lens[:, None]
    can_start = (lp[:, :, BLANK_ID] <= math.log(c.blank_threshold)) & live  # [B, T]
    min_start = math.log(c.min_start_prob)
    _, root_children = trie.expand(torch.zeros(1, dtype=torch.long))
    root_tok = trie.token[root_children]
    tok, is_end = trie.token, trie.is_end
    keys = torch.empty(0, dtype=torch.long)
    scores = torch.empty(0)
    starts = torch.empty(0, dtype=torch.long)
    hit_rows: List[torch.Tensor] = []
    for t in range(T):
        frame = lp[:, t]  # [B, V]
        ck, cs, cst = [], [], []
        if keys.numel():
            utt = keys // (2 * N)
            alive = t < lens[utt]
            if not bool(alive.all()):
                keys, scores, starts, utt = keys[alive], scores[alive], starts[alive], utt[alive]
        if keys.numel():
            node, kind = (keys // 2) % N, keys % 2
            emitting = kind == 0
            blank = frame[utt, BLANK_ID]
            stay = torch.where(emitting, frame[utt, tok[node]], blank)
            ck += [keys, keys[emitting] + 1]
            cs += [scores + stay, scores[emitting] + blank[emitting]]
            cst += [starts, starts[emitting]]
            row, ch = trie.expand(node)
            ok = ~emitting[row] | (tok[ch] != tok[node[row]])  # a repeated letter needs a blank between
            row, ch = row[ok], ch[ok]
            ck.append((utt[row] * N + ch) * 2)
            cs.append(scores[row] + c.bonus + frame[utt[row], tok[ch]])
            cst.append(starts[row])
        go = can_start[:, t].nonzero().flatten()
        if go.numel():
            g = frame[go][:, root_tok]  # [starting utterances, root children]
            ok = g >= min_start
            bi, ci = ok.nonzero(as_tuple=True)
            ck.append((go[bi] * N + root_children[ci]) * 2)
            cs.append(c.bonus + g[bi, ci])
            cst.append(torch.full((bi.numel(),), t, dtype=torch.long))
        if not ck:
            continue
        K, S, ST = torch.cat(ck), torch.cat(cs), torch.cat(cst)
        if K.numel() == 0:
            keys, scores, starts = K, S, ST
            continue
        KU = K // (2 * N)
        best = torch.full((B,), -math.inf).scatter_reduce(0, KU, S, reduce="amax", include_self=True)
        floor = best - c.beam  # per utterance
        hit = is_end[(K // 2) % N]
        if bool(hit.any()):
            h = hit & (S > c.threshold) & (S >= floor[KU])
            if bool(h.any()):
                hit_rows.append(torch.stack([KU[h].double(), trie.word[(K[h] // 2) % N].double(), ST[h].double(),
                                             torch.full((int(h.sum()),), float(t), dtype=torch.float64), S[h].double()], 1))
            K, S, ST = K[~hit], S[~hit], ST[~hit]
        keys, scores, starts = _reduce_max(K, S, ST)
        keep = scores >= floor[keys // (2 * N)]
        keys, scores, starts = keys[keep], scores[keep], starts[keep]
    out: List[List[SpottedWord]] = [[] for _ in range(B)]
    if hit_rows:
        rows = torch.cat(hit_rows)
        for b in rows[:, 0].unique().long().tolist():
            out[b] = _non_overlapping(rows[rows[:, 0] == b][:, 1:], trie, c.bonus, int(lens[b]))
    return out


def _non_overlapping(rows: torch.Tensor, trie: SpellingTrie, bonus: float, T: int) -> List[SpottedWord]:
    """Best-scoring hits first, each kept when none of its frames is taken by a kept one."""
    order = torch.argsort(rows[:, 3], descending=True, stable=True)
    taken = torch.zeros(T + 1, dtype=torch.bool)
    out = []
    for w, s, e, score in rows[order].tolist():
        s, e = int(s), int(e) + 1
        if bool(taken[s:e].any()):
            continue
        taken[s:e] = True
        word = trie.words[int(w)]
        out.append(SpottedWord(word, s, e, float(score), float(score) - bonus * int(trie.num_tokens[int(w)])))
    return sorted(out, key=lambda h: h.start)


def _check_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2 or log_probs.shape[1] != len(TOKENS):
        shape = tuple(log_probs.shape) if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
        raise ValueError(f"CTC log-probs must be [frames, {len(TOKENS)}], got {shape}")
    lp = log_probs.detach().float().cpu()
    if not torch.isfinite(lp).all():
        raise ValueError("CTC log-probs contain NaN or inf")
    return lp


def greedy_words(log_probs: torch.Tensor) -> Tuple[List[GreedyWord], torch.Tensor]:
    """The CTC greedy 1-best as words with frame spans (first letter to its ``|``, end
    exclusive), and a bool [T] marking the frames where a greedy token starts."""
    lp = _check_log_probs(log_probs)
    best = lp.argmax(1).tolist()
    starts = torch.zeros(len(best), dtype=torch.bool)
    words: List[GreedyWord] = []
    letters, first, prev = [], None, None
    for t, i in enumerate(best):
        if i != BLANK_ID and i != prev:
            starts[t] = True
            if i == BOUNDARY_ID:
                if letters:
                    words.append(GreedyWord("".join(letters), first, t + 1))
                letters, first = [], None
            else:
                if not letters:
                    first = t
                letters.append(TOKENS[i])
        if i != BLANK_ID and letters:
            last = t
        prev = i
    if letters:
        words.append(GreedyWord("".join(letters), first, last + 1))
    return words, starts


class GreedyScores:
    """The greedy path's score over any frames [s, e): per-frame best log-probs summed, plus
    ``token_weight`` per greedy token starting there (prefix sums: O(1) per query)."""

    def __init__(self, log_probs: torch.Tensor, token_starts: torch.Tensor, token_weight: float):
        lp = _check_log_probs(log_probs).double()
        per_frame = lp.max(1).values + token_weight * token_starts.double()
        self.prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(per_frame, 0)])

    def __call__(self, start: int, end: int) -> float:
        return float(self.prefix[end] - self.prefix[start])


def replace_greedy(greedy: Sequence[GreedyWord], hits: Sequence[SpottedWord], greedy_score,
                   min_overlap: float = 0.5) -> Tuple[List[GreedyWord], List[SpottedWord]]:
    """(words, accepted): hits whose score beats ``greedy_score(start, end)`` replace the greedy
    words with at least ``min_overlap`` of their frames inside them; words in time order."""
    accepted = [h for h in hits if h.score > greedy_score(h.start, h.end)]
    kept = []
    for g in greedy:
        n = max(1, g.end - g.start)
        inside = max((min(g.end, h.end) - max(g.start, h.start) for h in accepted), default=0)
        if inside / n < min_overlap:
            kept.append(g)
    out = kept + [GreedyWord(h.word, h.start, h.end) for h in accepted]
    return sorted(out, key=lambda w: (w.start, w.end)), accepted


def base_words(spans: Sequence[Tuple[str, float, float]], ctc_frame_shift: float, num_frames: int) -> List[GreedyWord]:
    """Another decoder's words ``(word, start_sec, end_sec)`` on CTC frames [start, end) (times
    rounded, clipped to the utterance, at least one frame), for ``base=`` of CTC-WS. A word
    without a time span cannot be placed: ValueError naming it."""
    if not ctc_frame_shift > 0:
        raise ValueError(f"CTC frame shift must be positive, got {ctc_frame_shift}")
    out = []
    for word, start, end in spans:
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"word {word!r} has no time span ({start}, {end}): CTC word spotting cannot place it")
        s = min(max(int(round(start / ctc_frame_shift)), 0), num_frames)
        e = min(max(int(round(end / ctc_frame_shift)), s + 1), max(num_frames, s + 1))
        out.append(GreedyWord(word, s, e))
    return out


def _merge(log_probs: torch.Tensor, hits: Sequence[SpottedWord], config: SpottingConfig,
           base: Optional[Sequence[GreedyWord]]) -> SpottingResult:
    greedy, token_starts = greedy_words(log_probs)
    edited = greedy if base is None else list(base)
    words, accepted = replace_greedy(edited, hits, GreedyScores(log_probs, token_starts, config.token_weight),
                                     config.min_overlap)
    return SpottingResult(words, edited, list(hits), accepted)


def ctc_word_spotting(log_probs: torch.Tensor, trie: SpellingTrie, config: SpottingConfig = SpottingConfig(),
                      base: Optional[Sequence[GreedyWord]] = None) -> SpottingResult:
    """Spot the trie's words and merge them into the CTC greedy 1-best, or into ``base`` (another
    decoder's words on CTC frames, ``base_words``) where given (module doc)."""
    return _merge(log_probs, spot(log_probs, trie, config), config, base)


def ctc_word_spotting_batch(log_probs: Sequence[torch.Tensor], trie: SpellingTrie,
                            config: SpottingConfig = SpottingConfig(), batch_frames: int = 20000,
                            bases: Optional[Sequence[Sequence[GreedyWord]]] = None) -> List[SpottingResult]:
    """``ctc_word_spotting`` of many utterances (with ``bases``: each one's base words), spotted
    together (``spot_batch``) in batches of at most ``batch_frames`` padded CTC frames; the same
    results, in the order given."""
    from rescorer.formats.frames import batches_by_frames

    if bases is not None and len(bases) != len(log_probs):
        raise ValueError(f"{len(bases)} base word sequences for {len(log_probs)} utterances")
    out: Dict[int, SpottingResult] = {}
    for batch in batches_by_frames({i: int(lp.shape[0]) for i, lp in enumerate(log_probs)}, batch_frames):
        for i, hits in zip(batch, spot_batch([log_probs[i] for i in batch], trie, config)):
            out[i] = _merge(log_probs[i], hits, config, None if bases is None else bases[i])
    return [out[i] for i in range(len(log_probs))]
