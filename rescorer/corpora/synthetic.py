"""A synthetic word-aligned English corpus made locally with TTS engines.

``prepare_synthetic(output_dir, config)`` returns lhotse manifests per split
(train / dev / test). Design, so that the corpus tests what the rescorer is for:

- Text: sentences from Debian ``fortunes`` (text_sources.fortune_sentences).
- OOV words: ``held_out_words`` word types are chosen (seeded) among mid-frequency
  words; half are reserved for dev, half for test. Any sentence containing one
  never goes to train. Dev/test are then filled so that the share of tokens whose
  word is absent from the train split is ``oov_token_rate`` (within one sentence).
- Voices: every engine's voices are split into disjoint train / dev / test sets,
  so dev and test are spoken by voices never heard in training.
- Variety: per-utterance prosody (rate, pitch, range) and augmentation (speed,
  reverberation, noise, telephone band; augment.py), all drawn from the seed.
- Deterministic: the whole plan (text, voice, prosody, augmentation per utterance)
  is drawn from the seed before any audio is made; audio is a pure function of it.
- Parallel and resumable: utterances are synthesized by ``num_jobs`` processes; each
  writes its FLAC and a JSON sidecar atomically, and a re-run skips finished ones.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from rescorer.corpora import augment
from rescorer.corpora.text_sources import fortune_sentences
from rescorer.corpora.tts import Prosody, SynthesisError, get_engine
from rescorer.corpora.tts.base import SAMPLE_RATE
from rescorer.utils import atomic_write_text, atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
PLAN_FORMAT = "rescorer.synthetic_plan/1"


@dataclass
class SyntheticConfig:
    train_utterances: int = 2000
    dev_utterances: int = 250
    test_utterances: int = 250
    engines: Tuple[str, ...] = ("espeak", "flite", "festival")
    engine_weights: Tuple[float, ...] = (0.5, 0.3, 0.2)
    held_out_words: int = 200
    oov_token_rate: float = 0.06
    dev_voice_fraction: float = 0.15
    test_voice_fraction: float = 0.2
    augment_prob: float = 0.7
    min_words: int = 3
    max_words: int = 14
    seed: int = 0
    text_dir: Optional[str] = None  # fortunes directory (default: the Debian one)

    def __post_init__(self) -> None:
        self.engines = tuple(self.engines)
        self.engine_weights = tuple(float(w) for w in self.engine_weights)
        if len(self.engines) != len(self.engine_weights):
            raise ValueError("engines and engine_weights must have the same length")
        if not 0.0 <= self.oov_token_rate < 0.5:
            raise ValueError(f"oov_token_rate must be in [0, 0.5), got {self.oov_token_rate}")
        for name in ("train_utterances", "dev_utterances", "test_utterances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown synthetic corpus options: {sorted(unknown)}")
        return cls(**known)


@dataclass
class PlannedUtterance:
    id: str
    split: str
    words: List[str]
    engine: str
    voice: str
    prosody: Dict[str, float]
    augment: Dict[str, object]
    seed: int


@dataclass
class Plan:
    config: SyntheticConfig
    utterances: List[PlannedUtterance]
    held_out: Dict[str, List[str]]  # split -> reserved OOV word types
    voices: Dict[str, Dict[str, List[str]]]  # engine -> split -> voices
    meta: Dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------- planning


def _choose_held_out(sentences: List[List[str]], n: int, rng: np.random.Generator) -> List[str]:
    doc_freq = Counter(w for s in sentences for w in set(s))
    common = set()
    try:
        from wordfreq import top_n_list

        common = set(top_n_list("en", 1500))
    except ImportError:
        pass
    candidates = sorted(
        w for w, c in doc_freq.items() if 2 <= c <= 8 and len(w) >= 4 and "'" not in w and w not in common
    )
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} candidate OOV words for held_out_words={n}")
    return sorted(rng.choice(candidates, size=n, replace=False).tolist())


def _fill_to_rate(
    oov_sents: List[List[str]], clean_sents: List[List[str]], train_vocab: set, n: int, rate: float
) -> List[List[str]]:
    """Pick n sentences so that the share of tokens outside train_vocab approaches ``rate``."""
    chosen: List[List[str]] = []
    oov_tok = tot_tok = 0
    oi = ci = 0
    while len(chosen) < n:
        cur = oov_tok / tot_tok if tot_tok else 0.0
        take_oov = cur < rate and oi < len(oov_sents)
        if not take_oov and ci >= len(clean_sents):
            take_oov = oi < len(oov_sents)
            if not take_oov:
                break
        if take_oov:
            s = oov_sents[oi]
            oi += 1
        else:
            s = clean_sents[ci]
            ci += 1
        chosen.append(s)
        oov_tok += sum(w not in train_vocab for w in s)
        tot_tok += len(s)
    if len(chosen) < n:
        raise ValueError(f"not enough sentences for {n} utterances (have {len(chosen)}); lower the split sizes")
    return chosen


def _split_voices(engine_name: str, voices: List[str], cfg: SyntheticConfig, rng: np.random.Generator) -> Dict[str, List[str]]:
    if len(voices) < 3:
        raise ValueError(f"engine {engine_name} has {len(voices)} voices; 3 or more are needed for disjoint splits")
    order = [voices[i] for i in rng.permutation(len(voices))]
    n_test = max(1, int(round(cfg.test_voice_fraction * len(voices))))
    n_dev = max(1, int(round(cfg.dev_voice_fraction * len(voices))))
    return {"test": sorted(order[:n_test]), "dev": sorted(order[n_test : n_test + n_dev]), "train": sorted(order[n_test + n_dev :])}


def plan_voices(cfg, voices_by_engine: Optional[Dict[str, List[str]]], rng: np.random.Generator) -> Dict[str, Dict[str, List[str]]]:
    """Each engine's voices split between train, dev and test (disjoint), so that every planned
    corpus holds voices out the same way; ``voices_by_engine`` None asks the installed engines."""
    if voices_by_engine is None:
        voices_by_engine = {e: get_engine(e).voices() for e in cfg.engines}
    return {e: _split_voices(e, sorted(voices_by_engine[e]), cfg, rng) for e in cfg.engines}


def plan_utterances(
    prefix: str, split: str, sentences: Sequence[Sequence[str]], cfg, voices: Dict[str, Dict[str, List[str]]],
    rng: np.random.Generator,
) -> List[PlannedUtterance]:
    """One planned utterance per sentence: an engine by ``cfg.engine_weights``, a voice of the
    split, prosody, augmentation and a render seed, drawn from ``rng`` in that order (a plan is
    reproducible from its seed)."""
    weights = np.asarray(cfg.engine_weights) / sum(cfg.engine_weights)
    utts: List[PlannedUtterance] = []
    for i, words in enumerate(sentences):
        engine = cfg.engines[int(rng.choice(len(cfg.engines), p=weights))]
        voice = str(rng.choice(voices[engine][split]))
        prosody = {
            "rate": round(float(rng.uniform(0.8, 1.3)), 3),
            "pitch": round(float(rng.uniform(0.7, 1.4)), 3),
            "pitch_range": round(float(rng.uniform(0.5, 1.5)), 3),
        }
        spec = augment.draw_spec(rng, cfg.augment_prob) if cfg.augment_prob > 0 else augment.AugmentSpec()
        vtag = "".join(c if c.isalnum() else "_" for c in voice)
        utts.append(
            PlannedUtterance(
                id=f"{prefix}-{split}-{i:06d}-{engine}-{vtag}", split=split, words=list(words), engine=engine,
                voice=voice, prosody=prosody, augment=spec.to_dict(), seed=int(rng.integers(2**31 - 1)),
            )
        )
    return utts


def make_plan(cfg: SyntheticConfig, voices_by_engine: Optional[Dict[str, List[str]]] = None) -> Plan:
    """Draw everything about the corpus from the seed; no audio is made here."""
    rng = np.random.default_rng(cfg.seed)
    sentences = fortune_sentences(cfg.text_dir, cfg.min_words, cfg.max_words)
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    held = _choose_held_out(sentences, cfg.held_out_words, rng)
    held_dev, held_test = set(held[0::2]), set(held[1::2])

    pools: Dict[str, List[List[str]]] = {"train": [], "dev": [], "test": []}
    for s in sentences:
        ws = set(s)
        d, t = bool(ws & held_dev), bool(ws & held_test)
        if d and t:
            continue
        pools["dev" if d else "test" if t else "train"].append(s)
    if len(pools["train"]) < cfg.train_utterances:
        raise ValueError(f"only {len(pools['train'])} train sentences available for train_utterances={cfg.train_utterances}")
    train = pools["train"][: cfg.train_utterances]
    rest = pools["train"][cfg.train_utterances :]
    vocab = {w for s in train for w in s}
    clean = [s for s in rest if all(w in vocab for w in s)]
    natural_oov = [s for s in rest if not all(w in vocab for w in s)]
    # held-out-word sentences first, then sentences with naturally unseen words
    n_clean_dev = len(clean) // 2
    dev = _fill_to_rate(pools["dev"] + natural_oov[0::2], clean[:n_clean_dev], vocab, cfg.dev_utterances, cfg.oov_token_rate)
    test = _fill_to_rate(pools["test"] + natural_oov[1::2], clean[n_clean_dev:], vocab, cfg.test_utterances, cfg.oov_token_rate)

    voices = plan_voices(cfg, voices_by_engine, rng)
    utts: List[PlannedUtterance] = []
    for split, sents in (("train", train), ("dev", dev), ("test", test)):
        utts += plan_utterances("syn", split, sents, cfg, voices, rng)
    return Plan(cfg, utts, {"dev": sorted(held_dev), "test": sorted(held_test)}, voices)


def _plan_to_json(plan: Plan) -> str:
    return json.dumps(
        {
            "format": PLAN_FORMAT,
            "config": asdict(plan.config),
            "held_out": plan.held_out,
            "voices": plan.voices,
            "utterances": [asdict(u) for u in plan.utterances],
        },
        sort_keys=True,
    )


def load_plan(path: Path) -> Plan:
    d = json.loads(Path(path).read_text())
    if d.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path}: not a synthetic corpus plan (format {d.get('format')!r})")
    return Plan(SyntheticConfig.from_dict(d["config"]), [PlannedUtterance(**u) for u in d["utterances"]], d["held_out"], d["voices"])


# ---------------------------------------------------------------- synthesis (worker side)


def _sidecar(audio_dir: Path, utt: PlannedUtterance) -> Tuple[Path, Path]:
    d = audio_dir / utt.split
    return d / f"{utt.id}.flac", d / f"{utt.id}.json"


def _render(engine, utt: PlannedUtterance, synthesized, audio_dir: Path) -> None:
    import soundfile as sf

    rng = np.random.default_rng(utt.seed)
    spec = augment.AugmentSpec(**utt.augment)
    samples, scale = augment.apply(synthesized.samples, spec, rng)
    dur = len(samples) / SAMPLE_RATE
    words = [
        {"word": w.word, "start": round(min(w.start * scale, dur), 4), "end": round(min(w.end * scale, dur), 4)}
        for w in synthesized.words
    ]
    flac, meta = _sidecar(audio_dir, utt)
    flac.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(flac) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    atomic_write_text(meta, json.dumps({"id": utt.id, "num_samples": len(samples), "words": words}))


def _synthesize_chunk(args) -> List[Tuple[str, Optional[str]]]:
    """Worker: synthesize a chunk of utterances of one engine; returns (id, error or None)."""
    engine_name, chunk, audio_dir = args
    todo = [u for u in chunk if not _sidecar(audio_dir, u)[1].exists()]
    results: List[Tuple[str, Optional[str]]] = [(u.id, None) for u in chunk if u not in todo]
    if not todo:
        return results
    engine = get_engine(engine_name)
    batch = getattr(engine, "synthesize_many", None)
    outs: List[object] = []
    if batch is not None and len(todo) > 1:
        items = [(u.words, u.voice, Prosody(**u.prosody)) for u in todo]
        try:
            outs = list(batch(items, errors="return"))  # failed sentences come back as exceptions
        except Exception:  # fall back to one at a time, so one bad sentence costs one utterance
            outs = []
    for i, u in enumerate(todo):
        try:
            out = outs[i] if i < len(outs) else None
            if isinstance(out, Exception):
                raise out
            if out is None:
                out = engine.synthesize(u.words, u.voice, Prosody(**u.prosody))
            _render(engine, u, out, audio_dir)
            results.append((u.id, None))
        except (SynthesisError, OSError, ValueError) as e:
            results.append((u.id, f"{type(e).__name__}: {e}"))
    return results


def synthesize_plan(plan: Plan, audio_dir: Path, num_jobs: int = 1, chunk_size: int = 16, progress: bool = True) -> Dict[str, str]:
    """Make the audio of every planned utterance not made yet; returns {utt_id: error} for failures."""
    from tqdm import tqdm

    by_engine: Dict[str, List[PlannedUtterance]] = {}
    for u in plan.utterances:
        by_engine.setdefault(u.engine, []).append(u)
    tasks = []
    for eng, us in by_engine.items():
        us = sorted(us, key=lambda u: u.voice)  # same voice together: engines switch voices slowly
        tasks += [(eng, us[i : i + chunk_size], audio_dir) for i in range(0, len(us), chunk_size)]
    failures: Dict[str, str] = {}
    bar = tqdm(total=len(plan.utterances), desc="synthesizing", unit="utt", disable=not progress)
    if num_jobs <= 1:
        it = map(_synthesize_chunk, tasks)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(num_jobs)
        it = pool.imap_unordered(_synthesize_chunk, tasks)
    try:
        for res in it:
            for uid, err in res:
                if err:
                    failures[uid] = err
            bar.update(len(res))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return failures


# ---------------------------------------------------------------- manifests


def build_manifests(plan: Plan, audio_dir: Path, split: str):
    """Lhotse RecordingSet, SupervisionSet and CutSet (with word alignments) for one split."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource
    from lhotse.supervision import AlignmentItem

    recs, sups = [], []
    for u in plan.utterances:
        if u.split != split:
            continue
        flac, meta_path = _sidecar(audio_dir, u)
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        n = int(meta["num_samples"])
        dur = n / SAMPLE_RATE
        recs.append(
            Recording(
                id=u.id, sources=[AudioSource(type="file", channels=[0], source=str(flac.resolve()))],
                sampling_rate=SAMPLE_RATE, num_samples=n, duration=dur,
            )
        )
        ali = [AlignmentItem(symbol=w["word"], start=w["start"], duration=round(w["end"] - w["start"], 4)) for w in meta["words"]]
        sups.append(
            SupervisionSegment(
                id=u.id, recording_id=u.id, start=0.0, duration=dur, channel=0, text=" ".join(u.words),
                language="English", speaker=f"{u.engine}:{u.voice}", alignment={"word": ali},
                custom={"engine": u.engine, "voice": u.voice, "prosody": dict(sorted(u.prosody.items())),
                        "augment": dict(sorted(u.augment.items()))},
            )
        )
    recordings = RecordingSet.from_recordings(recs)
    supervisions = SupervisionSet.from_segments(sups)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return recordings, supervisions, cuts


def prepare_synthetic(
    output_dir,
    config: Optional[SyntheticConfig] = None,
    num_jobs: int = 2,
    progress: bool = True,
) -> Dict[str, Dict[str, object]]:
    """Make (or finish making) the synthetic corpus in ``output_dir``.

    Returns {split: {"recordings", "supervisions", "cuts"}} and writes them as
    ``manifests/synthetic_{kind}_{split}.jsonl.gz``. A second call with the same config
    reuses all audio already made; a different config for the same directory is an error.
    """
    cfg = config or SyntheticConfig()
    out = Path(output_dir)
    plan = planned_corpus(out, cfg, "synthetic", make_plan, load_plan, _plan_to_json)
    return make_audio_and_manifests(plan, out, "synthetic", num_jobs=num_jobs, progress=progress)


def planned_corpus(out: Path, cfg, kind: str, make_plan, load_plan, plan_to_json):
    """The plan of a TTS corpus in ``out``: the one saved there (refused when it was made
    with another config), or a new one drawn from ``cfg`` and saved; shared by every TTS corpus."""
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    if plan_path.exists():
        plan = load_plan(plan_path)
        if asdict(plan.config) != asdict(cfg):
            raise ValueError(
                f"{out} was prepared with a different {kind} config; use a new directory or the same options.\n"
                f"  existing: {asdict(plan.config)}\n  asked:    {asdict(cfg)}"
            )
        log.info("resuming %s corpus in %s", kind, out)
    else:
        plan = make_plan(cfg)
        atomic_write_text(plan_path, plan_to_json(plan))
    return plan


def make_audio_and_manifests(plan: Plan, out: Path, prefix: str, num_jobs: int = 2, progress: bool = True):
    """Synthesize what ``plan`` still lacks under ``out/audio`` (failures listed in ``out/failed.json``)
    and write ``out/manifests/{prefix}_{kind}_{split}.jsonl.gz``; shared by every TTS corpus."""
    audio_dir = out / "audio"
    failures = synthesize_plan(plan, audio_dir, num_jobs=num_jobs, progress=progress)
    if not failures and (out / "failed.json").exists():
        (out / "failed.json").unlink()  # an earlier run's failures have been made good
    if failures:
        atomic_write_text(out / "failed.json", json.dumps(failures, indent=1, sort_keys=True))
        log.warning("%d utterances failed to synthesize (listed in %s)", len(failures), out / "failed.json")
    manifests = {}
    for split in SPLITS:
        recordings, supervisions, cuts = build_manifests(plan, audio_dir, split)
        for kind, m in (("recordings", recordings), ("supervisions", supervisions), ("cuts", cuts)):
            with atomic_path(out / "manifests" / f"{prefix}_{kind}_{split}.jsonl.gz") as tmp:
                m.to_file(str(tmp))
        manifests[split] = {"recordings": recordings, "supervisions": supervisions, "cuts": cuts}
    return manifests
