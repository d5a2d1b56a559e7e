"""k2 decoding of CTC/attention ASR outputs: greedy, HLG lattices, n-best, rescoring, oracle.

Methods (``--methods``, comma separated):

- ``ctc_greedy``: per-frame argmax, merge repeats, drop blanks, split at ``|``.
- ``hlg_1best``: best path of the HLG lattice (``k2.intersect_dense_pruned``).
- ``attention_beam``: the attention model's own beam search (``beam_search_encoded``, else
  ``beam_search``; no lattice, no LM), joint with its CTC head's prefix scores
  (``--beam-ctc-weight``, 0.3; 0 gives the decoder alone, which ends early or loops).
- ``hlg_attention_rescore``: icefall's attention-decoder rescoring: n-best from the
  lattice, each hypothesis's tokens scored by ``model.score_token_sequences`` (the
  utterance's encoder output [T', C] against all its hypotheses), total =
  am + ngram_lm_scale * lm + attention_scale * attention, best total wins.
- ``lattice_oracle``: the lattice path with the fewest word errors (exact, see
  ``lattice_oracle``).

Lattices (one ``k2.Fsa`` per utterance) carry per-arc attributes: ``aux_labels`` (word
ids, ragged: 0, 1 or 2 words on an arc), ``tokens`` (the CTC token emitted on the arc,
0 when none), ``frames`` (int32: the subsampled frame at which the arc is taken; the
final arc, label -1, has frame T), ``lm_scores`` (graph score: LM log-prob in nats plus
``<unk>`` penalties) and ``am_scores`` (= scores - lm_scores, the CTC log-probs).

Hypotheses (``rescorer.lattice.paths.Hypothesis``, the type word lattices use too): words,
and per word its span ``[start, end)`` on the lattice frame axis, in seconds (frames x
``frame_shift``, 0.04 s for x4 subsampling; ``nbest_record`` gives frames back) (start =
frame of the word's first letter token, end = frame of its ``|`` token + 1) and
its letters as heard (for ``<unk>``: the letters the letter loop took). Word labels may
sit on a different arc than the word's letters after determinization, so spans come
from the token sequence, matched to the words in order (each word ends with one ``|``).

Word lattices: ``word_lattice_arcs`` turns a token lattice into word arcs with spans and
am/lm scores (input of rescorer.lattice.word_lattice.build_word_lattice); its best path
equals the token lattice's 1-best (tested).

N-best: the 1-best path and ``num_paths`` paths drawn by ``k2.random_paths`` on the
lattice with scores x ``nbest_scale`` (``lattice.paths.sample_paths``, shared with word
lattices); distinct word sequences are kept, each with its highest-scoring drawn path,
sorted by total score (the 1-best first). Attention rescoring re-ranks them with
``lattice.paths.best_with_attention``; the oracle is ``lattice.paths.oracle_arc_path``.

CLI::

    rescorer decode --model-dir exp/ctc --data exp/asr_data/test.pt \\
        --lang-dir exp/lang --out exp/decode_test \\
        [--methods ctc_greedy,hlg_1best,attention_beam,hlg_attention_rescore,lattice_oracle] \\
        [--train-data exp/asr_data/train.pt]

writes ``hyp_<method>.txt`` (``utt_id words``), ``lattices.pt`` (rescorer.formats.token_lattices;
token lattices), with ``--word-lattices`` also ``word_lattices.pt`` (the same lattices as
word lattices with spans, rescorer.formats.word_lattices, via ``word_lattice_arcs``; pruned
at arc posterior ``--word-lattice-prune``, 1e-4 as rescoring prunes, 0 keeps every arc),
``metrics.json`` (per method ``wer``, ``iv_wer``, ``oov_wer``, S/D/I, ``rtf``; the LM's
OOV rate on the test words; skipped utterances) and, with lattices, ``nbest.jsonl``: per
utterance the ``--save-nbest`` best distinct hypotheses (words, frame spans, heard
letters, tokens, am/lm scores; the rescorer's n-best input); with ``--save-ctc-log-probs``
``ctc_log_probs.pt`` (rescorer.formats.ctc_log_probs: the model's CTC log-probs, which the
CTC fusion and word spotting of ``rescorer tune`` then reuse instead of running the model again).

RTF per method = (model forward time, shared by all methods, + that method's decoding
time, lattice generation included for the lattice methods) / audio seconds (feature
frames x 0.01 s), on the CPU it runs on. Utterances that cannot be decoded (empty
audio, shorter than 7 frames, longer than ``--max-frames``) are skipped with a logged
message, listed in ``metrics.json`` and scored with an empty hypothesis (deletions).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rescorer.decoding.graphs import load_lang_dir
from rescorer.decoding.lm import lm_oov_rate
from rescorer.formats import token_lattices
from rescorer.formats.contract import (
    FBANK, LATTICE_FRAME_SHIFT, MIN_INPUT_FRAMES, SUBSAMPLING_FACTOR, UNK, FeatureSpec, check_spec,
)
from rescorer.formats.ctc_log_probs import CtcLogProbs, write_ctc_log_probs
from rescorer.formats.tagged import FormatError, UnsafeFileError
from rescorer.formats.frames import batches_by_frames
from rescorer.formats.utterances import read_utterance_features
from rescorer.lattice.paths import Hypothesis, WordSpan, best_with_attention, oracle_arc_path, sample_paths
from rescorer.lattice.word_lattice import build_word_lattice, save_word_lattices
from rescorer.models.checkpoint import checkpoint_sha256, load_asr_model
from rescorer.models.ctc import ctc_greedy_decode
from rescorer.text import NotAWordError, split_words
from rescorer.tokens import BOUNDARY_ID, TOKENS, token_ids_to_words
from rescorer.wer import compute_wer, real_time_factor

log = logging.getLogger(__name__)

METHODS = ("ctc_greedy", "hlg_1best", "attention_beam", "hlg_attention_rescore", "lattice_oracle")


class DecodeInputError(ValueError):
    """Bad decoding input (message names the utterance or file)."""


# ---------------------------------------------------------------- greedy


def ctc_greedy_words(log_probs: torch.Tensor, lens: torch.Tensor) -> List[List[str]]:
    """Words per utterance from [B, T, V] CTC log-probs (``models.ctc.ctc_greedy_decode``'s
    tokens, split at ``|``)."""
    return [token_ids_to_words(ids) for ids in ctc_greedy_decode(log_probs, lens)]


# ---------------------------------------------------------------- lattices


def attach_frames(lattice) -> None:
    """Set ``lattice.frames`` (int32 per arc): the source state's distance from the start.

    In a CTC lattice every arc consumes one frame, so this is the frame index. Depths come
    from a breadth-first walk, so state numbering need not be topological. Raises
    ValueError when two paths reach a state at different depths (not a CTC lattice) or a
    state with arcs is unreachable from the start (call ``k2.connect`` first).
    """
    from collections import deque

    arcs = lattice.arcs.values()[:, :2].numpy()
    n_states = int(lattice.shape[0])
    src, dst = arcs[:, 0].tolist(), arcs[:, 1].tolist()
    out_arcs: List[List[int]] = [[] for _ in range(n_states)]
    for a, s in enumerate(src):
        out_arcs[s].append(a)
    depth = [-1] * n_states
    if n_states:
        depth[0] = 0
    queue = deque([0] if n_states else [])
    while queue:
        s = queue.popleft()
        v = depth[s] + 1
        for a in out_arcs[s]:
            d = dst[a]
            if depth[d] < 0:
                depth[d] = v
                queue.append(d)
            elif depth[d] != v:
                raise ValueError(f"state {d} is reached at frames {depth[d]} and {v}: not a CTC lattice")
    bad = next((s for s in src if depth[s] < 0), None)
    if bad is not None:
        raise ValueError(f"lattice state {bad} has arcs but is not reachable from the start state")
    lattice.frames = torch.tensor([depth[s] for s in src], dtype=torch.int32)


def get_lattices(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    HLG,
    search_beam: float = 20.0,
    output_beam: float = 8.0,
    min_active_states: int = 30,
    max_active_states: int = 10000,
) -> List:
    """One lattice (k2.Fsa with frames / am_scores / lm_scores) per utterance, input order."""
    import k2

    if not hasattr(HLG, "lm_scores"):
        HLG.lm_scores = HLG.scores.clone()
    lens = lens.to(torch.int32).cpu()
    if (lens <= 0).any():
        raise DecodeInputError("an utterance has no output frames (empty audio?)")
    order = torch.argsort(lens, descending=True)
    segs = torch.stack([order.to(torch.int32), torch.zeros_like(order, dtype=torch.int32), lens[order]], dim=1)
    dense = k2.DenseFsaVec(log_probs.float().cpu(), segs)
    lat = k2.intersect_dense_pruned(
        HLG, dense, search_beam=search_beam, output_beam=output_beam,
        min_active_states=min_active_states, max_active_states=max_active_states,
    )
    out: List = [None] * len(lens)
    for k, u in enumerate(order.tolist()):
        f = k2.connect(lat[k])  # pruned search can leave dead-end states; attributes follow the kept arcs
        f.am_scores = f.scores - f.lm_scores
        attach_frames(f)
        out[u] = f
    return out


# ---------------------------------------------------------------- paths and hypotheses


def nbest_record(h: Hypothesis, frame_shift: float = LATTICE_FRAME_SHIFT) -> dict:
    """A token-lattice hypothesis as ``nbest.jsonl`` stores it: words, spans in lattice frames
    (``[]`` when the path gave none), heard letters, tokens, scores."""
    spans = [[round(w.start / frame_shift), round(w.end / frame_shift)] for w in h.words]
    if any(math.isnan(w.start) for w in h.words):
        spans = []
    return {"words": h.word_sequence, "spans": spans, "letters": list(h.letters), "tokens": list(h.tokens),
            "am_score": h.am_score, "lm_score": h.lm_score, "score": h.score, "extra": dict(h.extra)}


class _LatInfo:
    """Per-arc numpy views of one lattice, for fast path extraction."""

    def __init__(self, lattice, id2word: Dict[int, str], frame_shift: float = LATTICE_FRAME_SHIFT):
        self.lattice = lattice
        self.id2word = id2word
        self.frame_shift = frame_shift
        self.scores = lattice.scores.detach().double().numpy()
        self.lm = lattice.lm_scores.detach().double().numpy() if hasattr(lattice, "lm_scores") else np.zeros_like(self.scores)
        self.tokens = lattice.tokens.numpy() if hasattr(lattice, "tokens") else np.zeros(len(self.scores), dtype=np.int32)
        if not hasattr(lattice, "frames"):
            raise ValueError("lattice has no 'frames' attribute (no frame information): run attach_frames")
        self.frames = lattice.frames.numpy()
        aux = lattice.aux_labels
        if isinstance(aux, torch.Tensor):
            a = aux.numpy()
            self.aux_rs = np.arange(len(a) + 1)
            self.aux_vals = a
        else:
            self.aux_rs = aux.shape.row_splits(1).numpy()
            self.aux_vals = aux.values.numpy()

    def hypothesis(self, arc_ids: Sequence[int]) -> Hypothesis:
        word_ids: List[int] = []
        toks: List[Tuple[int, int]] = []
        am = lm = 0.0
        for a in arc_ids:
            word_ids += [int(w) for w in self.aux_vals[self.aux_rs[a] : self.aux_rs[a + 1]] if w > 0]
            t = int(self.tokens[a])
            if t > 0:
                toks.append((t, int(self.frames[a])))
            lm += self.lm[a]
            am += self.scores[a] - self.lm[a]
        words = [self.id2word.get(w, f"<id:{w}>") for w in word_ids]
        spans, letters, cur, start = [], [], [], None
        for t, fr in toks:
            if t == BOUNDARY_ID:
                if cur:
                    spans.append((start, fr + 1))
                    letters.append("".join(cur))
                cur, start = [], None
            else:
                if start is None:
                    start = fr
                cur.append(TOKENS[t])
        fs = self.frame_shift
        if len(spans) != len(words):  # cannot happen with a rescorer lexicon; keep words, drop spans
            word_spans = [WordSpan(w, math.nan, math.nan) for w in words]
            letters = []
        else:
            word_spans = [WordSpan(w, s * fs, e * fs) for w, (s, e) in zip(words, spans)]
        return Hypothesis(word_spans, am + lm, am, lm, letters, [t for t, _ in toks])


def one_best(lattice, id2word: Dict[int, str], frame_shift: float = LATTICE_FRAME_SHIFT) -> Hypothesis:
    """The lattice's best path as a hypothesis (spans in seconds: lattice frames x ``frame_shift``)."""
    paths = sample_paths(lattice, 0)
    return _LatInfo(lattice, id2word, frame_shift).hypothesis(paths[0] if paths else [])


def nbest(lattice, id2word: Dict[int, str], num_paths: int = 100, nbest_scale: float = 0.5,
          frame_shift: float = LATTICE_FRAME_SHIFT) -> List[Hypothesis]:
    """Distinct word sequences of the lattice, best first (module doc): the paths of
    ``lattice.paths.sample_paths``, each distinct sequence with its best drawn path's score."""
    info = _LatInfo(lattice, id2word, frame_shift)
    paths = sample_paths(lattice, num_paths, nbest_scale) or [[]]
    seen: Dict[Tuple[str, ...], Hypothesis] = {}
    for p in paths:
        h = info.hypothesis(p)
        key = tuple(h.word_sequence)
        if key not in seen or h.score > seen[key].score:
            seen[key] = h
    first = seen[tuple(info.hypothesis(paths[0]).word_sequence)]
    rest = sorted((h for k, h in seen.items() if h is not first), key=lambda h: -h.score)
    return [first] + rest


def attention_rescore(
    nbests: Sequence[Sequence[Hypothesis]],
    scorer: Callable[[int, List[List[int]]], torch.Tensor],
    ngram_lm_scale: float = 1.0,
    attention_scale: float = 1.0,
) -> List[Hypothesis]:
    """icefall-style attention-decoder rescoring of n-best lists (``lattice.paths.best_with_attention``).

    ``scorer(utt_index, token_seqs)`` returns the attention log-likelihood of each token
    sequence (letters and ``|``). Total = am + ngram_lm_scale * lm + attention_scale *
    attention; the hypothesis with the best total is returned per utterance.
    """
    out: List[Hypothesis] = []
    for u, hyps in enumerate(nbests):
        if not hyps:
            out.append(Hypothesis([]))
            continue
        att = torch.as_tensor(scorer(u, [list(h.tokens) for h in hyps]), dtype=torch.float64).reshape(-1)
        k, total = best_with_attention([h.am_score + ngram_lm_scale * h.lm_score for h in hyps], att, attention_scale)
        out.append(replace(hyps[k], score=float(total[k]), extra={"attention": float(att[k])}))
    return out


# ---------------------------------------------------------------- token lattice -> word arcs


class WordArcError(ValueError):
    pass


def word_lattice_arcs(lattice, id2word: Dict[int, str]):
    """Word-level arcs of a CTC token lattice, for a word lattice with spans.

    Returns ``(arcs, final_states)``: ``arcs`` = tuples ``(src, dst, word, start_frame,
    end_frame, am, lm)`` and ``final_states`` = {state: (am, lm)} — the input of
    ``rescorer.lattice.word_lattice.build_word_lattice`` (with frame_shift = 0.04).

    Word-lattice states are token-lattice states: the start state and every state
    entered by a ``|`` (word boundary) arc. A word arc is a token sub-path from one
    boundary state through exactly one ``|`` arc: its word is the one word label on it
    (HLG puts each word's label within its own letters, see rescorer.decoding.lexicon),
    its span ``[frame of the first letter, frame of the | + 1)``, its am/lm the sums over
    the sub-path (leading blanks included). Sub-paths with the same (src, dst, word) are
    merged keeping the best (max) am + lm and that sub-path's start frame, i.e. a Viterbi
    segment score: alternatives that differ only in how many leading blanks precede the
    first letter would multiply the arcs (and the work) many times over for no new word
    sequence. Trailing arcs after the last ``|`` (blanks and the final arc) give the
    final state's (am, lm), again the best.
    """
    info = _LatInfo(lattice, id2word)
    av = lattice.arcs.values()
    src = av[:, 0].tolist()
    dst = av[:, 1].tolist()
    labels = av[:, 2].tolist()
    n_states = int(lattice.shape[0])
    out_arcs: List[List[int]] = [[] for _ in range(n_states)]
    for a, s in enumerate(src):
        out_arcs[s].append(a)
    tokens = info.tokens.tolist()
    frames = info.frames.tolist()
    am = (info.scores - info.lm).tolist()
    lm = info.lm.tolist()
    rs, vals = info.aux_rs.tolist(), info.aux_vals.tolist()
    boundary = {0} | {dst[a] for a in range(len(src)) if tokens[a] == BOUNDARY_ID}
    best_arc: Dict[Tuple[int, int, int], Tuple[float, float, int, int]] = {}
    finals: Dict[int, Tuple[float, float]] = {}
    for B in sorted(boundary):
        # partial sub-paths: (state, word or 0) -> (am, lm, first-letter frame or -1), the best
        layer: Dict[Tuple[int, int], Tuple[float, float, int]] = {(B, 0): (0.0, 0.0, -1)}
        while layer:
            nxt: Dict[Tuple[int, int], Tuple[float, float, int]] = {}
            for (s, w), (pa, pl, f) in layer.items():
                for a in out_arcs[s]:
                    na, nl = pa + am[a], pl + lm[a]
                    ws = [x for x in vals[rs[a] : rs[a + 1]] if x > 0]
                    nw = w
                    for x in ws:
                        if nw:
                            raise WordArcError(f"two word labels ({id2word.get(nw)}, {id2word.get(x)}) inside one word's tokens at arc {a}")
                        nw = x
                    t = tokens[a]
                    nf = frames[a] if (f < 0 and t > BOUNDARY_ID) else f
                    if labels[a] == -1:
                        if nw or nf >= 0:
                            raise WordArcError(f"path reaches the final state inside a word at arc {a}")
                        old = finals.get(B)
                        if old is None or na + nl > old[0] + old[1]:
                            finals[B] = (na, nl)
                        continue
                    if t == BOUNDARY_ID:
                        if not nw or nf < 0:
                            raise WordArcError(f"word boundary at arc {a} without a word label or letters")
                        key = (B, dst[a], nw)
                        old = best_arc.get(key)
                        if old is None or na + nl > old[0] + old[1]:
                            best_arc[key] = (na, nl, frames[a] + 1, nf)
                        continue
                    k = (dst[a], nw)
                    old = nxt.get(k)
                    if old is None or na + nl > old[0] + old[1]:
                        nxt[k] = (na, nl, nf)
            layer = nxt
    arcs = [(b, d, id2word.get(w, f"<id:{w}>"), v[3], v[2], v[0], v[1]) for (b, d, w), v in best_arc.items()]
    arcs.sort(key=lambda x: (x[0], x[3], x[1]))
    return arcs, finals


# ---------------------------------------------------------------- lattice oracle


def lattice_oracle(lattice, ref: Sequence[str], id2word: Dict[int, str]) -> Dict[str, object]:
    """Exact oracle: the lattice word sequence with the fewest edits to ``ref``.

    ``lattice.paths.oracle_arc_path`` with the CTC frame as the level (all arcs of a CTC
    lattice leaving frame t enter frame t + 1) and the ``aux_labels`` words of each arc;
    ``<unk>`` never matches. Scores are ignored: every path of the (pruned) lattice
    counts. Returns ``{"errors", "hyp"}``.
    """
    if int(lattice.shape[0]) == 0 or lattice.num_arcs == 0:
        return {"errors": len(ref), "hyp": []}
    info = _LatInfo(lattice, id2word)
    word2id = {w: i for i, w in id2word.items()}
    ref_ids = [word2id.get(w, -1) if w != UNK else -1 for w in ref]
    n_words = info.aux_rs[1:] - info.aux_rs[:-1]
    words_of = {a: [int(w) for w in info.aux_vals[info.aux_rs[a] : info.aux_rs[a + 1]] if w > 0] for a in np.nonzero(n_words)[0].tolist()}
    av = lattice.arcs.values()
    errors, path = oracle_arc_path(av[:, 0].numpy(), av[:, 1].numpy(), info.frames, words_of, int(lattice.shape[0]), ref_ids)
    return {"errors": errors, "hyp": [id2word.get(w, f"<id:{w}>") for a in path for w in words_of.get(a, [])]}


# ---------------------------------------------------------------- data


def load_utterance_data(path) -> dict:
    """Read a ``rescorer.utterances`` file (``rescorer.formats.utterances``) as its flat dict;
    a file that is not one (or holds objects, ``UnsafeFileError``) is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise DecodeInputError(f"{path}: no such data file")
    try:
        return read_utterance_features(path, expect=None).to_dict()  # checked against the model below
    except UnsafeFileError:
        raise
    except FormatError as e:
        raise DecodeInputError(str(e)) from None


def reference_words(texts: Sequence[str], utterance_ids: Sequence[str]) -> List[List[str]]:
    """Normalised reference words; a transcript with characters outside the token set is
    an error naming the utterance."""
    out = []
    bad = []
    for uid, t in zip(utterance_ids, texts):
        try:
            out.append(split_words(t) if t.strip() else [])
        except NotAWordError as e:
            bad.append(f"{uid}: {e}")
            out.append([])
    if bad:
        raise DecodeInputError(
            f"{len(bad)} transcript(s) have characters outside the token set (a-z and apostrophe):\n  " + "\n  ".join(bad[:10])
        )
    return out


def check_utterance(num_frames: int, utt_id: str, max_frames: int, frame_shift: float = FBANK.frame_shift,
                    min_frames: int = MIN_INPUT_FRAMES) -> Optional[str]:
    """None when decodable, else the reason (empty audio, too short, too long)."""
    if num_frames <= 0:
        return f"utterance {utt_id}: empty audio (0 feature frames)"
    if num_frames < min_frames:
        return f"utterance {utt_id}: {num_frames} frames is shorter than the {min_frames} the subsampling needs"
    if max_frames and num_frames > max_frames:
        return f"utterance {utt_id}: {num_frames} frames ({num_frames * frame_shift:.1f} s) is longer than the model handles (max {max_frames} frames); skipped"
    return None


def lm_coverage_message(cov: Dict[str, object], lang_dir, max_type_oov: float = 0.5) -> Optional[str]:
    """A warning when the LM lacks test words (always when it lacks more than half)."""
    rate = float(cov["type_oov_rate"])
    if rate == 0:
        return None
    ex = ", ".join(cov["missing_examples"][:5])
    if rate > max_type_oov:
        return (
            f"the LM in {lang_dir} lacks {100 * rate:.0f}% of the test word types (e.g. {ex}): was it built from the "
            "right text? Those words can only come out as <unk>."
        )
    return f"LM OOV rate on the test vocabulary: {100 * rate:.1f}% of types, {100 * float(cov['token_oov_rate']):.1f}% of tokens (e.g. {ex})"


def train_vocabulary(train_data: Optional[str], data_path: str) -> Optional[set]:
    """Words of the training transcripts: ``train_data`` (a rescorer.utterances file or a
    whitespace-separated word list .txt), else ``train.pt`` beside the decoded data."""
    cands = ([Path(train_data)] if train_data else []) + [Path(data_path).with_name("train.pt")]
    p = next((c for c in cands if c.is_file()), None)
    if p is None:
        return None
    log.info("training vocabulary (IV/OOV split) from %s", p)
    if p.suffix == ".txt":
        return set(p.read_text(encoding="utf-8").split())
    return {w for t in read_utterance_features(p, expect=None).texts for w in t.split()}


# ---------------------------------------------------------------- batching and word lattices
# (shared by decode_main and rescorer.decoding.timed_decode, which times this same path)


def length_batches(offsets: Sequence[int], keep: Sequence[int], max_batch_frames: int) -> List[List[int]]:
    """Utterance indices sorted by length (shortest first), cut so that a batch's padded
    frames (size x its longest) stay within ``max_batch_frames`` (at least one utterance each)."""
    return batches_by_frames({u: offsets[u + 1] - offsets[u] for u in keep}, max_batch_frames)


def padded_batch(feats_all: torch.Tensor, offsets: Sequence[int], batch: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """([B, T, D] float features zero-padded, [B] lengths) of the utterances ``batch``."""
    lens = torch.tensor([offsets[u + 1] - offsets[u] for u in batch])
    feats = torch.zeros(len(batch), int(lens.max()), feats_all.shape[1])
    for i, u in enumerate(batch):
        feats[i, : lens[i]] = feats_all[offsets[u] : offsets[u + 1]].float()
    return feats, lens


def word_lattices_of(lattices: Dict[str, object], ids: Sequence[str], lang, frame_shift: float,
                     progress: bool = False) -> Tuple[List, List[str]]:
    """(word lattices, ids without one) of token lattices, in ``ids`` order: ``word_lattice_arcs``
    then ``build_word_lattice``; an utterance whose search kept no complete path has nothing
    to rescore and is listed instead."""
    import k2
    from tqdm import tqdm

    table = k2.SymbolTable.from_file(str(lang.dir / "words.txt"))
    id2word = lang.id2word
    wls, no_lattice = [], []
    for uid in tqdm(ids, desc="word lattices", unit="utt", disable=not progress):
        arcs, finals = word_lattice_arcs(lattices[uid], id2word)
        if not arcs or not finals:
            no_lattice.append(uid)
            continue
        wls.append(build_word_lattice(
            arcs, table, frame_shift=frame_shift, final_states=finals, utterance_id=uid,
            meta={"source": "rescorer.decoding HLG lattice", "lang_dir": str(lang.dir)},
        ))
    return wls, no_lattice


# ---------------------------------------------------------------- CLI


def _model_output(model, feats: torch.Tensor, lens: torch.Tensor):
    """The ASR interface: model(feats [B,T,80], lens) -> (ctc_log_probs [B,T',29], out_lens)."""
    out = model(feats, lens)
    lp, out_lens = out[0], out[1]
    if lp.shape[-1] != len(TOKENS):
        raise DecodeInputError(f"the model outputs {lp.shape[-1]} classes, the token set has {len(TOKENS)}")
    return lp.float(), out_lens.cpu()


def _best_beam_tokens(r) -> List[int]:
    """Token ids of the best hypothesis of one utterance's beam-search result: a list of
    (tokens, score) best first (rescorer.models.attention), or a plain token list."""
    if not r:
        return []
    first = r[0]
    if isinstance(first, tuple) and len(first) == 2 and isinstance(first[0], (list, tuple)):
        first = first[0]
    elif not isinstance(first, (list, tuple)):
        first = r
    return [int(t) for t in first]


def decode_main(a) -> dict:

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise DecodeInputError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    data = load_utterance_data(a.data)
    ids = list(data["utterance_ids"])
    refs = reference_words(data["texts"], ids)
    device = torch.device(a.device)
    model, train_cfg = load_asr_model(a.model_dir)
    model.to(device).eval()
    sub = int(getattr(model, "subsampling_factor", SUBSAMPLING_FACTOR))
    spec = FeatureSpec.from_json(data["feature_spec"])
    trained_on = getattr(getattr(model, "encoder", None), "feature_spec", None)
    check_spec(spec, FeatureSpec.from_json(trained_on) if trained_on else FBANK, f"{a.data} (model {a.model_dir})")
    lattice_shift = spec.subsampled(sub)  # seconds per lattice frame
    model_max = getattr(model, "max_input_frames", None)
    max_frames = min(a.max_frames, int(model_max)) if model_max else a.max_frames
    if "attention_beam" in methods or "hlg_attention_rescore" in methods:
        if not hasattr(model, "score_token_sequences"):
            raise DecodeInputError(f"{a.model_dir}: a CTC-only model cannot run attention_beam / hlg_attention_rescore")
    offsets = data["offsets"].tolist()
    feats_all = data["feats"]
    skipped: Dict[str, str] = {}
    keep = []
    limit = a.max_utterances if a.max_utterances and a.max_utterances > 0 else len(ids)
    if limit < len(ids):  # a quick run on the first utterances; the others are left out of the WER
        ids, refs = ids[:limit], refs[:limit]
    for u, uid in enumerate(ids):
        why = check_utterance(offsets[u + 1] - offsets[u], uid, max_frames, spec.frame_shift)
        if why:
            log.warning(why)
            skipped[uid] = why
        else:
            keep.append(u)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: Dict[str, object] = {"data": str(a.data), "model_dir": str(a.model_dir), "utterances": len(ids), "skipped": skipped}

    need_lattice = any(m in methods for m in ("hlg_1best", "hlg_attention_rescore", "lattice_oracle"))
    lang = None
    if need_lattice:
        lang = load_lang_dir(a.lang_dir)
        test_words = [w for r in refs for w in r]
        cov = lm_oov_rate(lang.real_words(), test_words)
        metrics["lm_oov"] = cov
        msg = lm_coverage_message(cov, a.lang_dir)
        if msg:
            log.warning(msg)
    if a.train_data and not Path(a.train_data).is_file():
        raise DecodeInputError(f"--train-data {a.train_data}: no such file")
    vocab = train_vocabulary(a.train_data or (train_cfg or {}).get("train") or None, a.data)
    if vocab is None:
        log.warning("no training vocabulary (--train-data): iv_wer/oov_wer are not computed")

    audio_seconds = sum(offsets[u + 1] - offsets[u] for u in keep) * spec.frame_shift
    timing = {m: 0.0 for m in methods}
    hyps: Dict[str, Dict[str, List[str]]] = {m: {} for m in methods}
    lattices: Dict[str, object] = {}
    nbest_rows = []
    forward_seconds = 0.0
    saved_log_probs: Optional[Dict[str, torch.Tensor]] = {} if a.save_ctc_log_probs else None
    id2word = lang.id2word if lang else {}
    batches = length_batches(offsets, keep, a.max_batch_frames)
    from tqdm import tqdm

    bar = tqdm(total=len(keep), desc="decoding", unit="utt")
    with torch.no_grad():
        for b in batches:
            bar.update(len(b))
            feats, lens = padded_batch(feats_all, offsets, b)
            feats, lens = feats.to(device), lens.to(device)
            t0 = time.perf_counter()
            lp, out_lens = _model_output(model, feats, lens)
            lp = lp.cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            enc = None
            forward_seconds += time.perf_counter() - t0
            if saved_log_probs is not None:
                for j, u in enumerate(b):
                    saved_log_probs[ids[u]] = lp[j, : int(out_lens[j])].float().clone()
            if "ctc_greedy" in methods:
                t0 = time.perf_counter()
                for u, h in zip(b, ctc_greedy_words(lp, out_lens)):
                    hyps["ctc_greedy"][ids[u]] = h
                timing["ctc_greedy"] += time.perf_counter() - t0
            if "attention_beam" in methods:
                t0 = time.perf_counter()
                if hasattr(model, "beam_search_encoded"):
                    enc, enc_lens = model.encode(feats, lens)
                    res = model.beam_search_encoded(enc, enc_lens, beam=a.beam_size, ctc_weight=a.beam_ctc_weight)
                else:
                    res = model.beam_search(feats, lens, beam=a.beam_size, ctc_weight=a.beam_ctc_weight)
                for u, r in zip(b, res):
                    hyps["attention_beam"][ids[u]] = token_ids_to_words(_best_beam_tokens(r))
                timing["attention_beam"] += time.perf_counter() - t0
            if need_lattice:
                t0 = time.perf_counter()
                lats = get_lattices(lp, out_lens, lang.HLG, a.search_beam, a.output_beam, a.min_active_states, a.max_active_states)
                t_lat = time.perf_counter() - t0
                for m in ("hlg_1best", "hlg_attention_rescore", "lattice_oracle"):
                    if m in methods:
                        timing[m] += t_lat
                for u, lat in zip(b, lats):
                    lattices[ids[u]] = lat
                if "hlg_1best" in methods:
                    t0 = time.perf_counter()
                    for u, lat in zip(b, lats):
                        hyps["hlg_1best"][ids[u]] = one_best(lat, id2word, lattice_shift).word_sequence
                    timing["hlg_1best"] += time.perf_counter() - t0
                if "hlg_attention_rescore" in methods:
                    t0 = time.perf_counter()
                    if enc is None:
                        enc, enc_lens = model.encode(feats, lens)
                    nbs = [nbest(lat, id2word, a.num_paths, a.nbest_scale, lattice_shift) for lat in lats]

                    def scorer(i, seqs, enc=enc, enc_lens=enc_lens):
                        return torch.as_tensor(model.score_token_sequences(enc[i, : int(enc_lens[i])], seqs)).detach().cpu()

                    for u, h, nb in zip(b, attention_rescore(nbs, scorer, a.ngram_lm_scale, a.attention_scale), nbs):
                        hyps["hlg_attention_rescore"][ids[u]] = h.word_sequence
                        if a.save_nbest > 0:
                            nbest_rows.append({"utterance_id": ids[u], "nbest": [nbest_record(x, lattice_shift) for x in nb[: a.save_nbest]]})
                    timing["hlg_attention_rescore"] += time.perf_counter() - t0
                if "hlg_attention_rescore" not in methods and a.save_nbest > 0:  # for the rescorer; not timed
                    for u, lat in zip(b, lats):
                        nb = nbest(lat, id2word, a.num_paths, a.nbest_scale, lattice_shift)
                        nbest_rows.append({"utterance_id": ids[u], "nbest": [nbest_record(x, lattice_shift) for x in nb[: a.save_nbest]]})
                if "lattice_oracle" in methods:
                    t0 = time.perf_counter()
                    for u, lat in zip(b, lats):
                        hyps["lattice_oracle"][ids[u]] = lattice_oracle(lat, refs[u], id2word)["hyp"]
                    timing["lattice_oracle"] += time.perf_counter() - t0
    bar.close()
    metrics["audio_seconds"] = audio_seconds
    metrics["forward_seconds"] = forward_seconds
    metrics["subsampling_factor"] = sub
    metrics["methods"] = {}
    for m in methods:
        hy = [hyps[m].get(uid, []) for uid in ids]  # skipped utterances: empty hypotheses (all deletions)
        r = compute_wer(refs, hy, vocab)
        r["rtf"] = real_time_factor(forward_seconds + timing[m], audio_seconds)
        r["decode_seconds"] = timing[m]
        metrics["methods"][m] = r
        with open(out / f"hyp_{m}.txt", "w", encoding="utf-8") as f:
            for uid, h in zip(ids, hy):
                f.write(f"{uid} {' '.join(h)}\n".rstrip() + "\n")
    if lattices:
        order = [uid for uid in ids if uid in lattices]
        token_lattices.save_lattices(
            out / "lattices.pt", order, [lattices[u] for u in order], lang.dir / "words.txt",
            frame_shift=lattice_shift, subsampling_factor=sub,
        )
    if saved_log_probs:
        order = [uid for uid in ids if uid in saved_log_probs]
        write_ctc_log_probs(out / "ctc_log_probs.pt", CtcLogProbs(
            {u: saved_log_probs[u] for u in order}, list(TOKENS), lattice_shift,
            checkpoint_sha256(a.model_dir, kind="ASR")))
        metrics["ctc_log_probs"] = "ctc_log_probs.pt"
    if lattices and a.word_lattices:
        t0 = time.perf_counter()
        wls, no_lattice = word_lattices_of(lattices, [u for u in ids if u in lattices], lang, lattice_shift, progress=True)
        if no_lattice:
            log.warning("%d utterance(s) have no complete path in their lattice (left out of word_lattices.pt, "
                        "listed in metrics.json as no_lattice): %s", len(no_lattice), ", ".join(no_lattice[:5]))
        metrics["no_lattice"] = no_lattice
        metrics["word_lattice_seconds"] = time.perf_counter() - t0
        metrics["word_lattice_arcs"] = sum(int(w.num_arcs) for w in wls)
        if not wls:
            raise DecodeInputError(f"no utterance of {a.data} has a complete path in its lattice: the beams "
                              f"(--search-beam {a.search_beam}, --max-active-states {a.max_active_states}) are too "
                              f"narrow for this model, or it is untrained")
        save_word_lattices(out / "word_lattices.pt", wls, min_posterior=a.word_lattice_prune or None)
    if nbest_rows:
        pos = {uid: i for i, uid in enumerate(ids)}
        nbest_rows.sort(key=lambda r: pos[r["utterance_id"]])
        with open(out / "nbest.jsonl", "w") as f:
            for row in nbest_rows:
                f.write(json.dumps(row) + "\n")
    metrics["settings"] = {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str)) or v is None}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rescorer decode", description="Decode an ASR model with k2 (greedy, HLG lattices, n-best, attention rescoring, oracle).")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True, help="rescorer.utterances file (exp/asr_data/test.pt)")
    ap.add_argument("--lang-dir", default="exp/lang")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="ctc_greedy,hlg_1best,lattice_oracle")
    ap.add_argument("--train-data", default=None, help="training utterances (.pt) or a word list (.txt) for IV/OOV WER; default: train.pt beside --data")
    ap.add_argument("--max-frames", type=int, default=3000, help="longer utterances are skipped (counted as deletions); the model's max_input_frames, if it has one, lowers it")
    ap.add_argument("--device", default="cpu", help="device for the model forward pass (k2 decoding runs on CPU)")
    ap.add_argument("--max-batch-frames", type=int, default=20000)
    ap.add_argument("--max-utterances", type=int, default=0, help="decode only the first N utterances (0: all)")
    ap.add_argument("--search-beam", type=float, default=15.0)
    ap.add_argument("--output-beam", type=float, default=7.0, help="lattice beam; 7 keeps word lattices at a few thousand arcs per utterance")
    ap.add_argument("--min-active-states", type=int, default=30)
    ap.add_argument("--max-active-states", type=int, default=4000)
    ap.add_argument("--num-paths", type=int, default=100)
    ap.add_argument("--nbest-scale", type=float, default=0.5)
    ap.add_argument("--ngram-lm-scale", type=float, default=1.0)
    ap.add_argument("--attention-scale", type=float, default=1.0)
    ap.add_argument("--beam-size", type=int, default=8)
    ap.add_argument("--beam-ctc-weight", type=float, default=0.3,
                    help="attention_beam: weight of the CTC head's prefix scores (joint CTC/attention search; 0: the decoder alone)")
    ap.add_argument("--word-lattices", action="store_true", help="also write word_lattices.pt (rescorer.word_lattices, the rescorer's input) via word_lattice_arcs")
    ap.add_argument("--word-lattice-prune", type=float, default=1e-4,
                    help="word_lattices.pt keeps arcs with posterior >= this (recorded in the file; 0: every arc)")
    ap.add_argument("--save-ctc-log-probs", action="store_true",
                    help="also write ctc_log_probs.pt (rescorer.ctc_log_probs): the CTC log-probs, so that "
                         "rescorer tune --dev-ctc-log-probs need not run the model again")
    ap.add_argument("--save-nbest", type=int, default=0, help="hypotheses per utterance in nbest.jsonl (0: none)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        m = decode_main(a)
    except (DecodeInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: {kk: v.get(kk) for kk in ("wer", "iv_wer", "oov_wer", "rtf")} for k, v in m["methods"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
