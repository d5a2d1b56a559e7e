"""Evaluation of acoustic and letter-n-gram word embeddings (the issue's protocol).

Given a trained embedder (``rescorer.models.checkpoint.load_embedder``), the word
segments of one evaluation split and the training vocabulary, ``evaluate_embeddings``
measures:

- **Word identification** (precision@k): each segment's audio embedding ranks a candidate
  list of spellings by cosine; a hit at k when its true spelling is among the top k.
  The candidate list is the evaluation split's own vocabulary (every word type that has
  a segment in the split), reported separately for

  * in-vocabulary (IV) segments: their word occurs in the model's training vocabulary;
  * out-of-vocabulary (OOV) segments: their word never occurred in training, so only its
    spelling can name it.

  Both groups are ranked against the same, full split vocabulary (IV and OOV words
  together), so the two numbers are comparable.
- **Word identification against a 10x larger vocabulary**: the split vocabulary plus
  distractors, the most frequent words of ``large_word_list()`` (wordfreq order, then
  Debian ``wamerican`` / cmudict) that are not already in it, until the list holds
  ``factor`` x the split vocabulary (duplicates excluded; the split's words first). The
  original paper reports 73% P@1 for a 48k-word classifier and 53% when scoring against
  a ten times larger vocabulary.
- **Same-different AP** of the acoustic embeddings: all unordered pairs of segments,
  ranked by cosine, positive when both are the same word (``rescorer.metrics``); for all
  segments and for the IV and OOV groups on their own. Splits larger than
  ``max_ap_segments`` are subsampled (seeded) because memory grows with N^2.
- **Cross-view AP**: all (segment, spelling of the split vocabulary) pairs, positive when
  the spelling is the segment's word; all, IV and OOV segments.

``plot_embeddings`` draws a figure for people: the nearest spellings (in the 10x
candidate list) of some OOV segments, and a 2-D PCA projection (numpy SVD) of the audio
embeddings of a few words together with their spellings' embeddings.

Plain torch, numpy and matplotlib: neither lhotse nor k2 is needed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rescorer.corpora.text_sources import large_word_list
from rescorer.formats.word_segments import FORMAT as SEGMENTS_FORMAT
from rescorer.formats.contract import FeatureSpec
from rescorer.formats.word_segments import WordSegments, read_word_segments, record_view, word_segments_from_dict
from rescorer.metrics import NoPositivePairsError, crossview_ap, precision_at_k, same_different_ap
from rescorer.models.checkpoint import CheckpointError, read_embedder_checkpoint, trained_spellings

PAPER_NOTE = (
    "Bengio & Heigold 2014: 73% P@1 for a 48k-word classifier, 53% when scoring against "
    "a ten times larger vocabulary"
)


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated together (missing files, mismatched models/segments)."""


# ---------------------------------------------------------------- inputs


def load_segments(path: str, expect: Optional[FeatureSpec] = None) -> WordSegments:
    """Load a word-segment split, with an error that names the file when it is missing; with
    ``expect`` (the model's frontend), a file of stacked layers gives the model's layers."""
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"word segments not found: {p} (run the recipe's segments stage first)")
    rec = read_word_segments(p, expect=None)  # any frontend; the model checks dims (check_compatible)
    return word_segments_from_dict(record_view(rec, expect) if expect is not None else rec, source=str(p))


def check_compatible(acoustic, data: WordSegments, source: str = "segments") -> None:
    """Raise EvaluationError when the model's input feature size differs from the data's."""
    want = int(acoustic.feature_dim)
    have = int(data.feats.shape[1])
    if want != have:
        raise EvaluationError(
            f"feature dimension mismatch: the acoustic model expects {want}-dim frames, "
            f"{source} has {have}-dim frames (a model trained on other features?)"
        )


def read_checkpoint_info(model_dir: str, which: str = "best") -> Dict[str, Any]:
    """The checkpoint path, training vocabulary, config and epoch of a run (no model built)."""
    try:
        path, ckpt = read_embedder_checkpoint(model_dir, which)
    except (FileNotFoundError, CheckpointError) as e:
        raise EvaluationError(str(e)) from None
    return {
        "path": str(path),
        "train_vocabulary": ckpt.get("train_vocabulary"),
        # with the runs it was initialised from: the spellings whose n-gram rows are trained
        "trained_spellings": trained_spellings(ckpt) if ckpt.get("train_vocabulary") else None,
        "config": ckpt.get("config", {}),
        "epoch": ckpt.get("epoch"),
        "dev_p@1": ckpt.get("dev_p@1"),
    }


def read_training_log(model_dir: str) -> List[Dict[str, Any]]:
    """The per-epoch records of ``log.jsonl`` (empty when absent)."""
    path = Path(model_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def embedder_configuration(acoustic, letters, training_config: Optional[Dict[str, Any]] = None,
                           data: Optional[str] = None) -> Dict[str, Any]:
    """What distinguishes one embedder from another in a results row: spelling view,
    frontend, encoders, near negatives and the data, read from the models themselves."""
    spec = getattr(acoustic, "config", {}).get("feature_spec") or {"name": "fbank"}
    train = dict(training_config or {})
    pron = getattr(letters, "config", {}).get("pronunciation") or {}
    return {
        "spelling_view": getattr(letters, "spelling_views", "letters"),
        "frontend": spec.get("name", "fbank"),
        "acoustic_encoder": getattr(acoustic, "model_type", None),
        "spelling_encoder": getattr(letters, "model_type", None),
        "near_negatives": train.get("near_negatives", 0),
        "hard_negatives": train.get("hard_negatives"),
        "train_data": train.get("train"),
        "data": data,
        "lexicon_sha256": pron.get("lexicon_sha256"),
        "espeak_ng_version": pron.get("espeak_ng_version"),
    }


# ---------------------------------------------------------------- splits and candidates


def segment_words(data: WordSegments) -> List[str]:
    """The spelling of every segment, in segment order."""
    words = data.words
    return [words[i] for i in data.word_ids.tolist()]


def iv_oov_masks(data: WordSegments, train_vocabulary: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks [N] of the segments whose word is / is not in the training vocabulary."""
    known = set(train_vocabulary)
    in_vocab = torch.tensor([w in known for w in data.words], dtype=torch.bool)
    iv = in_vocab[data.word_ids]
    return iv, ~iv


def larger_candidate_list(
    vocabulary: Sequence[str], distractors: Sequence[str], factor: int = 10
) -> List[str]:
    """The split vocabulary followed by distractors, ``factor`` x its size, no duplicates.

    ``vocabulary`` keeps its order and comes first (duplicates inside it are dropped);
    distractors are taken in the given order (most frequent first for
    ``large_word_list()``), skipping words already in the list. Raises EvaluationError
    when there are not enough distinct distractors.
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    out: List[str] = []
    seen = set()
    for w in vocabulary:
        if w not in seen:
            seen.add(w)
            out.append(w)
    target = factor * len(out)
    for w in distractors:
        if len(out) >= target:
            break
        if w not in seen:
            seen.add(w)
            out.append(w)
    if len(out) < target:
        raise EvaluationError(
            f"only {len(out) - len(vocabulary)} distinct distractors for a {factor}x list "
            f"({target} words needed)"
        )
    return out


def default_distractors() -> List[str]:
    """``rescorer.corpora.text_sources.large_word_list()`` (~359k words, most frequent first)."""
    return large_word_list()


# ---------------------------------------------------------------- embedding


@torch.no_grad()
def embed_segments(
    acoustic, data: WordSegments, batch_size: int = 256, progress: bool = False, device=None
) -> torch.Tensor:
    """Unit audio embeddings [N, D] (CPU float32) of every segment, batched by length."""
    from tqdm import tqdm

    device = device or next(acoustic.parameters()).device
    was_training = acoustic.training
    acoustic.eval()
    order = torch.argsort(data.lengths)
    out = torch.empty(len(data), acoustic.dim)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="embed segments", unit="batch", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        feats, lengths, _ = data.batch(idx, acoustic.max_frames)
        out[idx] = acoustic(feats.to(device), lengths.to(device)).float().cpu()
    acoustic.train(was_training)
    return out


@torch.no_grad()
def embed_words(letters, words: Sequence[str], chunk_size: int = 8192, progress: bool = False) -> torch.Tensor:
    """Unit spelling embeddings [V, D] (CPU float32)."""
    from tqdm import tqdm

    was_training = letters.training
    letters.eval()
    outs = []
    starts = range(0, len(words), chunk_size)
    for start in tqdm(starts, desc="embed spellings", unit="chunk", disable=not progress, leave=False):
        outs.append(letters.encode_words(list(words[start : start + chunk_size])).float().cpu())
    letters.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, letters.dim)


# ---------------------------------------------------------------- metrics


def _precision(audio: torch.Tensor, targets: torch.Tensor, vocab_emb: torch.Tensor, ks) -> Optional[Dict[int, float]]:
    if len(audio) == 0:
        return None
    return precision_at_k(audio, targets, vocab_emb, ks=ks)


def _safe_ap(fn, *args) -> Optional[float]:
    try:
        return fn(*args)
    except NoPositivePairsError:
        return None


def _positive_pairs(labels: Sequence[int]) -> int:
    counts: Dict[int, int] = {}
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
    return sum(c * (c - 1) // 2 for c in counts.values())


def _subsample(indices: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if len(indices) <= limit:
        return indices
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(indices), generator=g)[:limit]
    return indices[torch.sort(keep).values]


@dataclass
class EvaluationResult:
    """Metrics (JSON-ready) plus the arrays the figure needs."""

    metrics: Dict[str, Any]
    audio: torch.Tensor  # [N, D]
    words: List[str]  # per segment
    oov: torch.Tensor  # [N] bool
    candidates: List[str]  # 10x list, split vocabulary first
    candidate_emb: torch.Tensor  # [10V, D]
    extra: Dict[str, Any] = field(default_factory=dict)


def evaluate_embeddings(
    acoustic,
    letters,
    data: WordSegments,
    train_vocabulary: Sequence[str],
    distractors: Optional[Sequence[str]] = None,
    factor: int = 10,
    ks: Sequence[int] = (1, 10),
    max_ap_segments: int = 6000,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> EvaluationResult:
    """Every metric of the module docstring for one split (see there for definitions).

    ``distractors`` default to ``large_word_list()``; pass a list to avoid loading it.
    """
    check_compatible(acoustic, data)
    if 1 not in ks or 10 not in ks:
        ks = sorted(set(ks) | {1, 10})
    audio = embed_segments(acoustic, data, batch_size=batch_size, progress=progress)
    vocab = list(data.words)
    if distractors is None:
        distractors = default_distractors()
    candidates = larger_candidate_list(vocab, distractors, factor)
    cand_emb = embed_words(letters, candidates, progress=progress)
    vocab_emb = cand_emb[: len(vocab)]
    targets = data.word_ids
    iv, oov = iv_oov_masks(data, train_vocabulary)
    words = segment_words(data)

    m: Dict[str, Any] = {}
    for name, mask in (("", torch.ones_like(iv)), ("iv_", iv), ("oov_", oov)):
        p = _precision(audio[mask], targets[mask], vocab_emb, ks)
        p10 = _precision(audio[mask], targets[mask], cand_emb, ks)
        for k in (1, 10):
            m[f"{name}p_at_{k}"] = None if p is None else p[k]
            m[f"{name}p_at_{k}_{factor}x_vocab"] = None if p10 is None else p10[k]
    if factor != 10:  # the key names refer to the 10x list
        m["p_at_1_10x_vocab"] = None
    m["oov_to_iv_p_at_1"] = (
        m["oov_p_at_1"] / m["iv_p_at_1"] if m["oov_p_at_1"] is not None and m["iv_p_at_1"] else None
    )

    # same-different AP (subsampled above max_ap_segments) and cross-view AP
    all_idx = torch.arange(len(data))
    ap_counts: Dict[str, Any] = {}
    for name, mask in (("", None), ("_iv", iv), ("_oov", oov)):
        idx = all_idx if mask is None else all_idx[mask]
        idx = _subsample(idx, max_ap_segments, seed)
        labels = targets[idx].tolist()
        m[f"acoustic_ap{name}"] = _safe_ap(same_different_ap, audio[idx], labels) if len(idx) >= 2 else None
        ap_counts[f"acoustic_ap{name}"] = {"segments": len(idx), "positive_pairs": _positive_pairs(labels)}
        sel = all_idx if mask is None else all_idx[mask]
        m[f"crossview_ap{name}"] = (
            _safe_ap(crossview_ap, audio[sel], targets[sel], vocab_emb, torch.arange(len(vocab)))
            if len(sel)
            else None
        )

    oov_types = sorted({w for w, o in zip(words, oov.tolist()) if o})
    known = set(train_vocabulary)
    m["counts"] = {
        "segments": len(data),
        "iv_segments": int(iv.sum()),
        "oov_segments": int(oov.sum()),
        "vocabulary": len(vocab),
        "iv_types": sum(w in known for w in vocab),
        "oov_types": len(oov_types),
        "train_vocabulary": len(set(train_vocabulary)),
        "candidates_10x" if factor == 10 else f"candidates_{factor}x": len(candidates),
        "speakers": len(set(data.speaker_ids.tolist())),
        "ap_pairs": ap_counts,
    }
    return EvaluationResult(m, audio, words, oov, candidates, cand_emb)


# ---------------------------------------------------------------- figure


def nearest_spellings(
    result: EvaluationResult, segment_indices: Sequence[int], top: int = 5
) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """[(true word, [(spelling, cosine), ...top])] in the 10x candidate list."""
    sims = result.audio[list(segment_indices)] @ result.candidate_emb.T
    vals, idx = sims.topk(min(top, sims.shape[1]), dim=1)
    out = []
    for row, i in enumerate(segment_indices):
        out.append(
            (result.words[i], [(result.candidates[j], float(v)) for j, v in zip(idx[row].tolist(), vals[row].tolist())])
        )
    return out


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of ``x`` on their first two principal components (numpy SVD)."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


def _pick_examples(result: EvaluationResult, count: int, seed: int) -> List[int]:
    """One segment of each of ``count`` OOV words (seeded), sorted by word."""
    rng = random.Random(seed)
    by_word: Dict[str, List[int]] = {}
    for i, (w, o) in enumerate(zip(result.words, result.oov.tolist())):
        if o:
            by_word.setdefault(w, []).append(i)
    chosen = sorted(rng.sample(sorted(by_word), min(count, len(by_word))))
    return [rng.choice(by_word[w]) for w in chosen]


def _pick_projection_words(result: EvaluationResult, count: int, seed: int) -> List[str]:
    """Words with the most segments (IV and OOV mixed), for a readable projection."""
    counts: Dict[str, int] = {}
    for w in result.words:
        counts[w] = counts.get(w, 0) + 1
    oov_words = {w for w, o in zip(result.words, result.oov.tolist()) if o}
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    iv_top = [w for w in ranked if w not in oov_words and len(w) > 2][: max(1, count - 3)]
    oov_top = [w for w in ranked if w in oov_words][: count - len(iv_top)]
    return sorted(iv_top + oov_top)


def plot_embeddings(
    result: EvaluationResult,
    path: str,
    title: str = "",
    examples: int = 12,
    projection_words: int = 10,
    top: int = 5,
    seed: int = 0,
) -> Path:
    """Save the figure (nearest spellings of OOV segments + 2-D PCA) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(16, 7.5), gridspec_kw={"width_ratios": [1.15, 1]})

    # left: nearest spellings of OOV segments in the 10x candidate list
    ax_t.axis("off")
    picks = _pick_examples(result, examples, seed)
    rows = nearest_spellings(result, picks, top=top)
    ax_t.set_title(
        f"Nearest spellings of unseen (OOV) words' audio\namong {len(result.candidates):,} candidates "
        f"(test vocabulary + distractors); green = correct",
        fontsize=11,
    )
    if not rows:
        ax_t.text(0.5, 0.5, "no OOV segments in this split", ha="center", va="center", fontsize=12)
    n = max(len(rows), 1)
    line_h = min(0.075, 0.9 / (n + 1))
    ax_t.text(0.0, 0.95, "spoken word", fontweight="bold", fontsize=10, transform=ax_t.transAxes)
    ax_t.text(0.22, 0.95, f"top {top} spellings by cosine", fontweight="bold", fontsize=10, transform=ax_t.transAxes)
    for r, (true, near) in enumerate(rows):
        y = 0.95 - (r + 1) * line_h
        ax_t.text(0.0, y, true, fontsize=10, family="monospace", transform=ax_t.transAxes)
        x = 0.22
        for spelling, cos in near:
            ok = spelling == true
            ax_t.text(
                x, y, f"{spelling} {cos:.2f}", fontsize=9, family="monospace", transform=ax_t.transAxes,
                color="white" if ok else "black",
                bbox=dict(facecolor="#2e9d4e" if ok else "#eeeeee", edgecolor="none", pad=1.5),
            )  # fmt: skip
            x += 0.0125 * (len(spelling) + 6) + 0.01

    # right: 2-D PCA of audio embeddings (dots) and spelling embeddings (stars) of some words
    chosen = _pick_projection_words(result, projection_words, seed)
    idx = [i for i, w in enumerate(result.words) if w in set(chosen)]
    word_row = {w: result.candidates.index(w) for w in chosen}
    if idx:
        pts = torch.cat([result.audio[idx], result.candidate_emb[[word_row[w] for w in chosen]]]).numpy()
        xy = pca_2d(pts)
        audio_xy, spell_xy = xy[: len(idx)], xy[len(idx) :]
        cmap = plt.get_cmap("tab10" if len(chosen) <= 10 else "tab20")
        oov_words = {w for w, o in zip(result.words, result.oov.tolist()) if o}
        for c, w in enumerate(chosen):
            color = cmap(c % cmap.N)
            mine = [k for k, i in enumerate(idx) if result.words[i] == w]
            label = f"{w} (OOV)" if w in oov_words else w
            ax_p.scatter(audio_xy[mine, 0], audio_xy[mine, 1], s=22, color=color, alpha=0.75, label=label)
            ax_p.scatter(spell_xy[c, 0], spell_xy[c, 1], s=260, marker="*", color=color, edgecolor="black", zorder=3)
            ax_p.annotate(w, spell_xy[c], xytext=(6, 6), textcoords="offset points", fontsize=10, fontweight="bold")
        ax_p.legend(fontsize=8, loc="best", ncol=2, title="dots: audio segments; stars: spellings", title_fontsize=8)
    ax_p.set_title("Audio and spelling embeddings, first two principal components", fontsize=11)
    ax_p.set_xlabel("PC 1")
    ax_p.set_ylabel("PC 2")
    ax_p.grid(alpha=0.3)
    m = result.metrics
    summary = "  ".join(
        f"{k} {m[k]:.3f}" for k in ("iv_p_at_1", "oov_p_at_1", "p_at_1_10x_vocab", "acoustic_ap", "crossview_ap")
        if m.get(k) is not None
    )  # fmt: skip
    fig.suptitle(f"{title}\n{summary}" if title else summary, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- held-out part of a training split


def split_by_speaker(data: WordSegments, fraction: float, seed: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(fit, held_out) export dicts: a seeded ``fraction`` of the speakers is held out.

    For corpora with no separate dev split (speechocean762): train on ``fit``, select
    checkpoints on ``held_out``, and evaluate on the corpus's own dev split. Each part
    gets its own sorted vocabulary, like every exported split.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    speakers = sorted(set(data.speaker_ids.tolist()))
    if len(speakers) < 2:
        raise EvaluationError("need at least two speakers to hold some out")
    rng = random.Random(seed)
    held = set(rng.sample(speakers, max(1, int(round(fraction * len(speakers))))))
    is_held = torch.tensor([s in held for s in data.speaker_ids.tolist()], dtype=torch.bool)
    return _subset(data, torch.nonzero(~is_held).reshape(-1)), _subset(data, torch.nonzero(is_held).reshape(-1))


def _subset(data: WordSegments, idx: torch.Tensor) -> Dict[str, Any]:
    lengths = data.lengths[idx]
    offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    frame_idx = torch.cat([torch.arange(int(data.offsets[i]), int(data.offsets[i + 1])) for i in idx.tolist()])
    words = [data.words[i] for i in data.word_ids[idx].tolist()]
    vocab = sorted(set(words))
    wid = {w: i for i, w in enumerate(vocab)}
    return {
        "format": SEGMENTS_FORMAT,
        "feats": data.feats[frame_idx],
        "offsets": offsets,
        "word_ids": torch.tensor([wid[w] for w in words], dtype=torch.long),
        "words": vocab,
        "speaker_ids": data.speaker_ids[idx].clone(),
        "speakers": list(data.speakers),
        "utterance_ids": [data.utterance_ids[i] for i in idx.tolist()],
        "num_mel_bins": data.num_mel_bins,
        "frame_shift": data.frame_shift,
        "feature_spec": data.spec.to_json(),  # the frontend's name too (Whisper states are not fbank)
    }


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(type(x).__name__)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
