"""Checkpoints of both model families, written and read in one place.

- the embedder (``rescorer.embedder/1``): an acoustic word encoder and a spelling encoder
  trained together, each recorded with its registry name (``acoustic_type``,
  ``spelling_type``; ``rescorer.models.registry``) and constructor arguments, so the
  loader builds whatever classes the run trained. Checkpoints written before the names
  were recorded hold the conv encoder and the letter n-gram encoder, and load as those.
- the ASR models (``rescorer.asr/1``): CTC or joint CTC/attention (``model_type``), with
  the token set they were trained on.

A run directory holds ``best.pt`` (best dev score) and ``last.pt`` (everything resuming
needs), and an ASR run selected by error rate also ``best_loss.pt`` (lowest dev loss: the CTC
methods' spelling scorer); ``checkpoint_path`` picks one (``best`` falls back to ``last.pt``
while no ``best.pt`` exists). Writes are atomic: a temporary file, fsync, then ``os.replace``.

Trust: a checkpoint is a model that users pass around, so reading one never runs code from it,
on torch 1.13 as on 2.x: ``rescorer.formats.tagged.load_plain`` reads it as plain data
(``weights_only=True``; on torch 1.13, whose weights-only loader refuses the Python floats of
configs and optimizer states, an unpickler that rebuilds tensors itself and resolves no other
global). A file holding any other object is a ``CheckpointError`` and nothing in it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from rescorer.formats.contract import FBANK, FeatureSpec
from rescorer.formats.tagged import FormatError, load_plain
from rescorer.models.acoustic import AcousticWordEncoder
from rescorer.models.attention import AttentionModel
from rescorer.models.ctc import CtcModel
from rescorer.models.interfaces import AcousticEncoder, SpellingEncoder
from rescorer.models.letters import LetterNgramEncoder
from rescorer.models.registry import ACOUSTIC_ENCODERS, ASR_MODELS, SPELLING_ENCODERS
from rescorer.tokens import TOKENS
from rescorer.utils import atomic_path, file_sha256

PathLike = Union[str, os.PathLike]

EMBEDDER_FORMAT = "rescorer.embedder/1"
ASR_FORMAT = "rescorer.asr/1"
BEST = "best.pt"
LAST = "last.pt"
# an ASR run selected by error rate also keeps its checkpoint of lowest dev loss: the CTC methods
# score spellings with it (calibrated log-probs; by the epoch of best CER the loss has long risen)
BEST_LOSS = "best_loss.pt"
CHECKPOINTS = ("best", "last", "best_loss")
# what an embedder checkpoint without recorded types holds (written before they were recorded)
LEGACY_ACOUSTIC_TYPE = AcousticWordEncoder.model_type
LEGACY_SPELLING_TYPE = LetterNgramEncoder.model_type
# the classes above register themselves on import; named here so that loading finds them
_BUILT_IN = (AcousticWordEncoder, LetterNgramEncoder, CtcModel, AttentionModel)


class CheckpointError(ValueError):
    """A file or directory that holds no checkpoint of the expected kind."""


# ---------------------------------------------------------------- files


def checkpoint_path(location: PathLike, which: str = "best", kind: str = "model") -> Path:
    """The checkpoint file of a run directory (``which``: "best", falling back to last.pt
    while no best.pt exists; "last"; or "best_loss", an ASR run's checkpoint of lowest dev
    loss: best_loss.pt, or best.pt where the run selects by loss and keeps no other), or
    ``location`` itself when it is a file."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    path = Path(location)
    if path.is_dir():
        if which == "best_loss":
            return _best_loss_path(path, kind)
        path = path / (BEST if which == "best" else LAST)
        if which == "best" and not path.exists():
            path = path.with_name(LAST)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} checkpoint at {path} (train one first)")
    return path


def _best_loss_path(run: Path, kind: str) -> Path:
    if (run / BEST_LOSS).is_file():
        return run / BEST_LOSS
    try:
        select_by = json.loads((run / "config.json").read_text()).get("select_by")
    except (OSError, ValueError, AttributeError):
        select_by = None
    if select_by == "loss" and (run / BEST).is_file():
        return run / BEST
    raise FileNotFoundError(f"no {kind} checkpoint of lowest dev loss in {run}: no {BEST_LOSS}, and its best.pt is not "
                            f"selected by loss (a run trained before {BEST_LOSS} was kept, or not an ASR run)")


def checkpoint_sha256(location: PathLike, which: str = "best", kind: str = "model") -> str:
    """sha256 of the checkpoint file ``checkpoint_path`` picks: what names the weights that
    produced a stored output (e.g. ``formats.ctc_log_probs``)."""
    return file_sha256(checkpoint_path(location, which, kind))


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """torch.save ``state`` atomically (``rescorer.utils.atomic_path``, flushed to disk first)."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp:
        torch.save(state, str(tmp))
    return path


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Read a checkpoint as plain data (the module docstring's trust rule), its tensors moved
    to ``map_location``; a file that is not one, or holds objects, is a ``CheckpointError``."""
    try:
        state = load_plain(path, "checkpoint")
    except FormatError as e:  # UnsafeFileError included: refused, never unpickled
        raise CheckpointError(str(e)) from None
    return _to_device(state, map_location)


def _to_device(obj: Any, map_location: Any) -> Any:
    if map_location is None or str(map_location) == "cpu":
        return obj  # plain loading gives CPU tensors
    if isinstance(obj, torch.Tensor):
        return obj.to(map_location)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, map_location)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, map_location) for v in obj)
    return obj


def _read(location: PathLike, which: str, fmt: str, kind: str, map_location: Any) -> Tuple[Path, Dict[str, Any]]:
    path = checkpoint_path(location, which, kind)
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path}: not an {kind} checkpoint ({fmt})")
    return path, ckpt


# ---------------------------------------------------------------- the embedder


def embedder_state(acoustic: AcousticEncoder, letters: SpellingEncoder, config: Dict[str, Any]) -> Dict[str, Any]:
    """The part of an embedder checkpoint that ``load_embedder`` reads: types, configs, weights."""
    return {
        "format": EMBEDDER_FORMAT,
        "config": dict(config),
        "acoustic_type": acoustic.model_type,
        "spelling_type": letters.model_type,
        "acoustic_config": dict(acoustic.config),
        "letters_config": dict(letters.config),
        "acoustic": acoustic.state_dict(),
        "letters": letters.state_dict(),
    }


def save_embedder(
    path: PathLike, acoustic: AcousticEncoder, letters: SpellingEncoder, config: Optional[Dict[str, Any]] = None
) -> Path:
    """Write both encoders to one checkpoint file for ``load_embedder``."""
    return save_checkpoint(embedder_state(acoustic, letters, config or {}), path)


def read_embedder_checkpoint(
    location: PathLike, which: str = "best", map_location: Any = "cpu"
) -> Tuple[Path, Dict[str, Any]]:
    """(path, checkpoint dict) of an embedder run or file, without building the models."""
    return _read(location, which, EMBEDDER_FORMAT, "embedder", map_location)


def trained_spellings(ckpt: Dict[str, Any]) -> List[str]:
    """Every spelling an embedder checkpoint was trained on: its run's vocabulary and those of
    the runs it was initialised from (``train embeddings --init-from``), sorted. Their
    letter n-gram rows are trained; the others are zeroed (``zero_untrained_buckets_``)."""
    return sorted(set(ckpt.get("train_vocabulary") or []) | set(ckpt.get("init_vocabulary") or []))


def _config_differences(theirs: Dict[str, Any], ours: Dict[str, Any]) -> List[str]:
    keys = sorted(set(theirs) | set(ours))
    return [f"{k} ({theirs.get(k, 'absent')!r} there, {ours.get(k, 'absent')!r} here)" for k in keys
            if theirs.get(k) != ours.get(k)]


def initial_feature_spec(location: PathLike, which: str = "best") -> FeatureSpec:
    """The feature spec an embedder checkpoint's acoustic encoder was trained on (fbank when it
    records none)."""
    _, ckpt = read_embedder_checkpoint(location, which)
    recorded = dict(ckpt.get("acoustic_config") or {}).get("feature_spec")
    return FeatureSpec.from_json(recorded) if recorded else FBANK


def init_embedder_from(
    acoustic: AcousticEncoder, letters: SpellingEncoder, location: PathLike, which: str = "best"
) -> Tuple[Path, Dict[str, Any]]:
    """Copy the weights of an embedder checkpoint into freshly built encoders (pretrain, then
    fine-tune), after checking that both encoders are the same classes with the same
    constructor arguments: sizes, input frontend and its feature spec. Returns (path, checkpoint).
    Raises CheckpointError naming every difference otherwise."""
    path, ckpt = read_embedder_checkpoint(location, which)
    problems = []
    for part, kind_key, legacy, config_key, model in (
        ("acoustic encoder", "acoustic_type", LEGACY_ACOUSTIC_TYPE, "acoustic_config", acoustic),
        ("spelling encoder", "spelling_type", LEGACY_SPELLING_TYPE, "letters_config", letters),
    ):
        kind = ckpt.get(kind_key, legacy)
        if kind != model.model_type:
            problems.append(f"{part}: {kind!r} there, {model.model_type!r} here")
            continue
        theirs, ours = dict(ckpt[config_key]), dict(model.config)
        if part == "acoustic encoder":  # an fbank encoder records no spec: it is the default one
            theirs.setdefault("feature_spec", FBANK.to_json())
            ours.setdefault("feature_spec", FBANK.to_json())
            theirs.setdefault("frame_shift", FBANK.frame_shift)
            ours.setdefault("frame_shift", FBANK.frame_shift)
        diff = _config_differences(theirs, ours)
        if diff:
            problems.append(f"{part} differs in " + ", ".join(diff))
    if problems:
        raise CheckpointError(
            f"{path}: cannot initialise this run from it: " + "; ".join(problems)
            + " (train with the same encoder sizes, on segments of the same frontend)"
        )
    acoustic.load_state_dict(ckpt["acoustic"])
    letters.load_state_dict(ckpt["letters"])
    return path, ckpt


def load_embedder(
    location: PathLike, which: str = "best", map_location: Any = "cpu"
) -> Tuple[AcousticEncoder, SpellingEncoder, Dict[str, Any]]:
    """(acoustic encoder, spelling encoder, training config) of a run directory or a
    checkpoint file, in eval mode; the classes are the ones the checkpoint names."""
    _, ckpt = read_embedder_checkpoint(location, which, map_location)
    acoustic = ACOUSTIC_ENCODERS.build(ckpt.get("acoustic_type", LEGACY_ACOUSTIC_TYPE), ckpt["acoustic_config"])
    acoustic.load_state_dict(ckpt["acoustic"])
    letters = SPELLING_ENCODERS.build(ckpt.get("spelling_type", LEGACY_SPELLING_TYPE), ckpt["letters_config"])
    letters.load_state_dict(ckpt["letters"])
    return acoustic.eval(), letters.eval(), ckpt["config"]


# ---------------------------------------------------------------- ASR models


def asr_state(model: nn.Module, config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The part of an ASR checkpoint that ``load_asr_model`` reads: type, architecture, tokens, weights."""
    return {
        "format": ASR_FORMAT,
        "model_type": model.model_type,
        "model_config": dict(model.config),
        "tokens": list(TOKENS),
        "config": dict(config or {}),
        "model": model.state_dict(),
    }


def save_asr_model(path: PathLike, model: nn.Module, config: Optional[Dict[str, Any]] = None) -> Path:
    """Write a model (weights + architecture) for ``load_asr_model``."""
    return save_checkpoint(asr_state(model, config), path)


def read_asr_checkpoint(location: PathLike, which: str = "best", map_location: Any = "cpu") -> Tuple[Path, Dict[str, Any]]:
    """(path, checkpoint dict) of an ASR run or file, without building the model."""
    return _read(location, which, ASR_FORMAT, "ASR", map_location)


def load_asr_model(location: PathLike, which: str = "best", map_location: Any = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """(model in eval mode, training config dict) of a run directory or a checkpoint file."""
    path, ckpt = read_asr_checkpoint(location, which, map_location)
    if list(ckpt.get("tokens", TOKENS)) != list(TOKENS):
        raise CheckpointError(f"{path}: trained with another token set")
    model = ASR_MODELS.build(ckpt["model_type"], ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["config"]
