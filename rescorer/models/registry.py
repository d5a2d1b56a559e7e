"""Model classes by name: the config value a training run records (``"conv"``,
``"letter_ngram"``, ``"ctc"``, ...) -> the class that rebuilds the model from its
checkpoint. A new encoder registers itself with a decorator and is then chosen by its
name, by training when building models and by ``rescorer.models.checkpoint`` when loading.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from torch import nn

from rescorer.models.interfaces import AcousticEncoder, SpellingEncoder

ModelClass = TypeVar("ModelClass", bound=Type[nn.Module])


class UnknownModelTypeError(ValueError):
    """A model type that no registered class has (e.g. a checkpoint from a newer version)."""


class Registry:
    """Name -> model class for one kind of model; classes are checked against ``interface``."""

    def __init__(self, kind: str, interface: Optional[type] = None):
        self.kind = kind
        self.interface = interface
        self.classes: Dict[str, Type[nn.Module]] = {}

    def register(self, name: str) -> Callable[[ModelClass], ModelClass]:
        """Class decorator: register the class under ``name`` and set its ``model_type`` to it."""

        def decorate(cls: ModelClass) -> ModelClass:
            known = self.classes.get(name)
            if known is not None and known is not cls:
                raise ValueError(f"{self.kind} type {name!r} is already registered ({known.__qualname__})")
            missing = self._missing_members(cls)
            if missing:
                raise TypeError(f"{cls.__qualname__} lacks {', '.join(missing)} of the {self.kind} interface")
            cls.model_type = name
            self.classes[name] = cls
            return cls

        return decorate

    def _missing_members(self, cls: type) -> List[str]:
        """The interface's methods that ``cls`` lacks (its data attributes are set per instance,
        so only an instance could show them)."""
        if self.interface is None:
            return []
        methods = [m for m, v in vars(self.interface).items() if not m.startswith("_") and callable(v)]
        methods += [m for m, v in vars(self.interface).items() if isinstance(v, classmethod)]
        return sorted({m for m in methods if not hasattr(cls, m)})

    def get(self, name: str) -> Type[nn.Module]:
        try:
            return self.classes[name]
        except KeyError:
            raise UnknownModelTypeError(
                f"unknown {self.kind} type {name!r}; registered: {', '.join(sorted(self.classes)) or 'none'}"
            ) from None

    def build(self, name: str, config: Dict[str, Any]) -> nn.Module:
        """A new model of type ``name`` from its constructor arguments."""
        return self.get(name).from_config(dict(config))

    def names(self) -> List[str]:
        return sorted(self.classes)


ACOUSTIC_ENCODERS = Registry("acoustic word encoder", AcousticEncoder)
SPELLING_ENCODERS = Registry("spelling encoder", SpellingEncoder)
ASR_MODELS = Registry("ASR model")
