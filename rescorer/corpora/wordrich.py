"""A word-type-rich TTS corpus: tens of thousands of word types, for training the spelling side.

The fortunes corpus (``synthetic.py``) speaks ~4k word types; a spelling encoder needs far
more to learn how English spellings sound. This corpus speaks words of a word list (Debian
``wamerican``) a few at a time inside carrier sentences ("the next words are X Y Z"),
mixed with fortunes sentences, with the engines, voices, prosody, augmentation, parallel
and resumable synthesis of the fortunes corpus (``synthetic.make_audio_and_manifests``).

- List words: lower-case a-z entries of the word list, ``min_word_length..max_word_length``
  letters, minus every word of the fortunes sentence pool and of the carriers. The list
  words are therefore their own word types: a segment of a list word is a list-word token,
  so subsets by word type (``list_word_tokens``) count exactly what they say.
- Held out: ``held_out_dev_types`` / ``held_out_test_types`` list words (seeded) are spoken
  only in dev / test, ``held_out_repeats`` times each: the evaluation words for OOV P@1.
  Voices are disjoint between train, dev and test, as in the fortunes corpus.
- Train list words come in nested tiers ``type_tiers`` = [[types, repeats], ...], in a
  seeded rank order: the first ``types`` of the first tier are spoken ``repeats`` times,
  the next ones up to the second tier's ``types`` that tier's ``repeats`` times, and so on.
  The default [[2000, 16], [8000, 4], [32000, 1]] lets a training subset of the first
  2k, 8k or 32k types hold the same number of tokens (32k: 16, 4 or 1 per type), so the
  OOV-vs-word-types experiment (benchmarks/oov_vs_word_types.py) compares equal hours.
- Dev/test list utterances also speak words of the first tier (a share ``eval_iv_share``
  of their list tokens): words every such subset trains on, so IV P@1 is comparable.
- Excluded words (the words of ``exclude_words_of`` minus those of ``keep_words_of``: word-list
  files or lhotse supervision/cut manifests, e.g. a real corpus's dev minus its train
  transcripts, i.e. its dev OOV words): never spoken, neither as list words nor inside a
  fortunes sentence, so that corpus's OOV words stay unseen by pretraining and its OOV
  P@1 measures unseen words, not words the spelling encoder met in synthetic speech.
- Deterministic: the whole plan is drawn from the seed first; audio is a pure function of it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from rescorer.corpora.synthetic import (
    SPLITS,
    Plan,
    PlannedUtterance,
    make_audio_and_manifests,
    plan_utterances,
    plan_voices,
    planned_corpus,
)
from rescorer.corpora.text_sources import TextSourceError, fortune_sentences

log = logging.getLogger(__name__)

PLAN_FORMAT = "rescorer.wordrich_plan/1"
MANIFEST_PREFIX = "wordrich"
DEBIAN_WORD_LIST = "/usr/share/dict/american-english"
# "{}" is where the list words go; every other word is an ordinary (normalised) word
DEFAULT_CARRIERS = (
    "the next words are {}",
    "please say {}",
    "{}",
    "now repeat {} after me",
    "here is the list {}",
    "write down {} carefully",
    "you will hear {}",
    "the answer is {}",
)
_LIST_WORD = re.compile(r"[a-z]+")


@dataclass
class WordRichConfig:
    # train list words: nested tiers of [cumulative types, tokens per type], in rank order
    type_tiers: Tuple[Tuple[int, int], ...] = ((2000, 16), (8000, 4), (32000, 1))
    held_out_dev_types: int = 500
    held_out_test_types: int = 1000
    held_out_repeats: int = 2
    eval_iv_share: float = 0.5  # share of dev/test list tokens that are first-tier train words
    min_list_words: int = 4  # list words per utterance (uniform in [min, max])
    max_list_words: int = 7
    carriers: Tuple[str, ...] = DEFAULT_CARRIERS
    train_fortunes: int = 1000  # fortunes sentences mixed in, per split
    dev_fortunes: int = 100
    test_fortunes: int = 100
    engines: Tuple[str, ...] = ("espeak", "flite", "festival")
    engine_weights: Tuple[float, ...] = (0.5, 0.3, 0.2)
    dev_voice_fraction: float = 0.15
    test_voice_fraction: float = 0.2
    augment_prob: float = 0.7
    min_word_length: int = 3
    max_word_length: int = 16
    min_words: int = 3  # fortunes sentence length
    max_words: int = 14
    seed: int = 0
    word_list: str = DEBIAN_WORD_LIST
    text_dir: Optional[str] = None  # fortunes directory (default: the Debian one)
    exclude_words_of: Tuple[str, ...] = ()  # word lists / lhotse manifests whose words are never spoken...
    keep_words_of: Tuple[str, ...] = ()  # ...unless they are words of these (e.g. the real corpus's train)

    def __post_init__(self) -> None:
        self.type_tiers = tuple((int(t), int(r)) for t, r in self.type_tiers)
        self.carriers = tuple(self.carriers)
        self.engines = tuple(self.engines)
        self.engine_weights = tuple(float(w) for w in self.engine_weights)
        for name in ("exclude_words_of", "keep_words_of"):
            v = getattr(self, name)
            setattr(self, name, (str(v),) if isinstance(v, (str, Path)) else tuple(str(p) for p in v))
        if not self.type_tiers:
            raise ValueError("type_tiers needs at least one [types, repeats] tier")
        types = [t for t, _ in self.type_tiers]
        if any(t < 1 for t in types) or types != sorted(set(types)):
            raise ValueError(f"type_tiers: cumulative type counts must be positive and increasing, got {types}")
        if any(r < 1 for _, r in self.type_tiers):
            raise ValueError(f"type_tiers: repeats must be >= 1, got {self.type_tiers}")
        if len(self.engines) != len(self.engine_weights):
            raise ValueError("engines and engine_weights must have the same length")
        if not 1 <= self.min_list_words <= self.max_list_words:
            raise ValueError(f"need 1 <= min_list_words <= max_list_words, got {self.min_list_words}, {self.max_list_words}")
        if not 0.0 <= self.eval_iv_share < 1.0:
            raise ValueError(f"eval_iv_share must be in [0, 1), got {self.eval_iv_share}")
        for name in ("held_out_dev_types", "held_out_test_types", "held_out_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("train_fortunes", "dev_fortunes", "test_fortunes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for c in self.carriers:
            if c.count("{}") != 1:
                raise ValueError(f"carrier {c!r} must hold exactly one '{{}}' (where the list words go)")
            bad = [w for w in c.replace("{}", " ").split() if not _LIST_WORD.fullmatch(w)]
            if bad:
                raise ValueError(f"carrier {c!r}: not lower-case words: {bad}")

    @property
    def train_types(self) -> int:
        return self.type_tiers[-1][0]

    def tokens_per_rank(self) -> List[int]:
        """Tokens of each train list word, by rank (the tiers unrolled)."""
        out: List[int] = []
        for types, repeats in self.type_tiers:
            out += [repeats] * (types - len(out))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "WordRichConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown word-rich corpus options: {sorted(unknown)}")
        return cls(**known)


@dataclass
class WordRichPlan(Plan):
    """A synthetic-corpus plan (same utterance records, same synthesis) plus the list words."""

    train_types: List[str] = field(default_factory=list)  # train list words in rank order (tiers)
    eval_iv_types: List[str] = field(default_factory=list)  # first-tier words also spoken in dev/test


# ---------------------------------------------------------------- planning


def carrier_words(carriers: Sequence[str]) -> List[str]:
    return sorted({w for c in carriers for w in c.replace("{}", " ").split()})


def excluded_words(paths: Sequence[str]) -> set:
    """Normalised words of word-list files and of lhotse supervision/cut manifests' transcripts."""
    from rescorer.formats.word_list import WordListError, read_word_list
    from rescorer.text import NotAWordError, split_words

    out: set = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise TextSourceError(f"word exclusion: {path} not found")
        if path.name.endswith((".jsonl.gz", ".jsonl", ".json")):
            from lhotse import CutSet, SupervisionSet, load_manifest

            try:
                m = load_manifest(path)
            except Exception as e:  # lhotse raises plain exceptions for unknown manifests
                raise TextSourceError(f"word exclusion: {path} is not a lhotse manifest: {e}") from e
            if isinstance(m, CutSet):
                sups = [s for c in m for s in c.supervisions]
            elif isinstance(m, SupervisionSet):
                sups = list(m)
            else:
                raise TextSourceError(f"word exclusion: {path} holds {type(m).__name__}, not supervisions or cuts")
            for s in sups:
                try:
                    out.update(split_words(s.text or ""))
                except NotAWordError:
                    continue  # an empty or non-word transcript excludes nothing
        else:
            try:
                out.update(read_word_list(path))
            except WordListError as e:
                raise TextSourceError(f"word exclusion: {e}") from e
    return out


def candidate_list_words(cfg: WordRichConfig, excluded: set) -> List[str]:
    """The word list's usable entries (sorted), minus ``excluded`` (fortunes and carrier words)."""
    path = Path(cfg.word_list)
    if not path.is_file():
        raise TextSourceError(f"word list {path} not found: install the Debian package 'wamerican' or set word_list")
    words = set()
    for w in path.read_text(encoding="utf-8", errors="replace").split():
        if _LIST_WORD.fullmatch(w) and cfg.min_word_length <= len(w) <= cfg.max_word_length and w not in excluded:
            words.add(w)
    return sorted(words)


def _chunk(tokens: List[str], cfg: WordRichConfig, rng: np.random.Generator) -> List[List[str]]:
    out, i = [], 0
    while i < len(tokens):
        n = int(rng.integers(cfg.min_list_words, cfg.max_list_words + 1))
        out.append(tokens[i : i + n])
        i += n
    return out


def _in_carrier(list_words: List[str], cfg: WordRichConfig, rng: np.random.Generator) -> List[str]:
    template = cfg.carriers[int(rng.integers(len(cfg.carriers)))]
    before, after = template.split("{}")
    return before.split() + list_words + after.split()


def make_plan(cfg: WordRichConfig, voices_by_engine: Optional[Dict[str, List[str]]] = None) -> WordRichPlan:
    """Draw everything about the corpus from the seed; no audio is made here."""
    rng = np.random.default_rng(cfg.seed)
    sentences = fortune_sentences(cfg.text_dir, cfg.min_words, cfg.max_words)
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    never = excluded_words(cfg.exclude_words_of) - excluded_words(cfg.keep_words_of)
    if never:
        sentences = [s for s in sentences if not never.intersection(s)]
    n_fortunes = cfg.train_fortunes + cfg.dev_fortunes + cfg.test_fortunes
    if n_fortunes > len(sentences):
        raise ValueError(f"{n_fortunes} fortunes sentences asked for, {len(sentences)} available")
    if never.intersection(carrier_words(cfg.carriers)):
        raise ValueError(f"carrier words {sorted(never.intersection(carrier_words(cfg.carriers)))} are in "
                         "exclude_words_of: change the carriers or the exclusion")
    excluded = {w for s in sentences for w in s} | set(carrier_words(cfg.carriers)) | never
    pool = candidate_list_words(cfg, excluded)
    need = cfg.train_types + cfg.held_out_dev_types + cfg.held_out_test_types
    if len(pool) < need:
        raise ValueError(
            f"{cfg.word_list} gives {len(pool)} list words ({cfg.min_word_length}-{cfg.max_word_length} letters, "
            f"not in fortunes or carriers); the config needs {need} (train tiers + held-out dev/test types)"
        )
    ranked = [pool[i] for i in rng.permutation(len(pool))[:need]]
    held_test = ranked[: cfg.held_out_test_types]
    held_dev = ranked[cfg.held_out_test_types : cfg.held_out_test_types + cfg.held_out_dev_types]
    train_types = ranked[cfg.held_out_test_types + cfg.held_out_dev_types :]
    first_tier = train_types[: cfg.type_tiers[0][0]]

    train_tokens = [w for w, k in zip(train_types, cfg.tokens_per_rank()) for _ in range(k)]
    train_tokens = [train_tokens[i] for i in rng.permutation(len(train_tokens))]
    lists: Dict[str, List[List[str]]] = {"train": _chunk(train_tokens, cfg, rng)}
    eval_iv: List[str] = []
    for split, held in (("dev", held_dev), ("test", held_test)):
        oov = [w for w in held for _ in range(cfg.held_out_repeats)]
        n_iv = int(round(len(oov) * cfg.eval_iv_share / (1.0 - cfg.eval_iv_share)))
        iv = [first_tier[i % len(first_tier)] for i in rng.permutation(max(n_iv, len(first_tier)))[:n_iv]]
        eval_iv += iv
        tokens = oov + iv
        lists[split] = _chunk([tokens[i] for i in rng.permutation(len(tokens))], cfg, rng)
    fortunes = {
        "train": sentences[: cfg.train_fortunes],
        "dev": sentences[cfg.train_fortunes : cfg.train_fortunes + cfg.dev_fortunes],
        "test": sentences[cfg.train_fortunes + cfg.dev_fortunes : n_fortunes],
    }

    voices = plan_voices(cfg, voices_by_engine, rng)
    utts: List[PlannedUtterance] = []
    for split in SPLITS:
        texts = [_in_carrier(ws, cfg, rng) for ws in lists[split]] + [list(s) for s in fortunes[split]]
        utts += plan_utterances("wr", split, texts, cfg, voices, rng)
    return WordRichPlan(
        cfg, utts, {"dev": sorted(held_dev), "test": sorted(held_test)}, voices,
        train_types=train_types, eval_iv_types=sorted(set(eval_iv)),
    )


# ---------------------------------------------------------------- plan file


def plan_to_json(plan: WordRichPlan) -> str:
    return json.dumps(
        {
            "format": PLAN_FORMAT,
            "config": asdict(plan.config),
            "held_out": plan.held_out,
            "voices": plan.voices,
            "train_types": plan.train_types,
            "eval_iv_types": plan.eval_iv_types,
            "utterances": [asdict(u) for u in plan.utterances],
        },
        sort_keys=True,
    )


def load_plan(path) -> WordRichPlan:
    d = json.loads(Path(path).read_text())
    if d.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path}: not a word-rich corpus plan (format {d.get('format')!r})")
    return WordRichPlan(
        WordRichConfig.from_dict(d["config"]), [PlannedUtterance(**u) for u in d["utterances"]], d["held_out"],
        d["voices"], train_types=d["train_types"], eval_iv_types=d["eval_iv_types"],
    )


def list_word_tokens(plan: WordRichPlan, split: str) -> Dict[str, int]:
    """Planned tokens of each list word in ``split`` (carrier and fortunes words excluded)."""
    list_words = set(plan.train_types) | set(plan.held_out["dev"]) | set(plan.held_out["test"])
    counts: Dict[str, int] = {}
    for u in plan.utterances:
        if u.split == split:
            for w in u.words:
                if w in list_words:
                    counts[w] = counts.get(w, 0) + 1
    return counts


def plan_summary(plan: WordRichPlan) -> Dict[str, Dict[str, int]]:
    """Per split: utterances, tokens, distinct word types, list-word types and tokens."""
    out: Dict[str, Dict[str, int]] = {}
    for split in SPLITS:
        utts = [u for u in plan.utterances if u.split == split]
        lw = list_word_tokens(plan, split)
        out[split] = {
            "utterances": len(utts),
            "tokens": sum(len(u.words) for u in utts),
            "word_types": len({w for u in utts for w in u.words}),
            "list_word_types": len(lw),
            "list_word_tokens": sum(lw.values()),
        }
    return out


# ---------------------------------------------------------------- corpus


def prepare_wordrich(output_dir, config: Optional[WordRichConfig] = None, num_jobs: int = 2, progress: bool = True):
    """Make (or finish making) the word-rich corpus in ``output_dir``.

    Returns {split: {"recordings", "supervisions", "cuts"}}, written as
    ``manifests/wordrich_{kind}_{split}.jsonl.gz``; ``plan.json`` holds the plan. A second call
    with the same config reuses the audio made; another config for the same directory is refused.
    """
    cfg = config or WordRichConfig()
    out = Path(output_dir)
    plan = planned_corpus(out, cfg, "word-rich", make_plan, load_plan, plan_to_json)
    return make_audio_and_manifests(plan, out, MANIFEST_PREFIX, num_jobs=num_jobs, progress=progress)
