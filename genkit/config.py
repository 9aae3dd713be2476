"""Typed configuration: one ``Config`` base for model, part and training settings (dict round trips, validation)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from genkit.errors import ConfigError

C = TypeVar("C", bound="Config")

#: Environment variable naming the data root (the folder holding ``MNIST/`` and ``FashionMNIST/``).
DATA_ENV = "GENKIT_DATA_DIR"

#: the largest integer option: every JSON reader holds it exactly, and torch's int64 arithmetic cannot overflow
MAX_INT = 2**53


def _short(value: int) -> str:
    """An integer as text, shortened when it has too many digits to read."""
    digits = str(value)
    return digits if len(digits) <= 20 else f"{digits[:8]}...({len(digits)} digits)"


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with a default, a one-line help text (shown by ``genkit info``) and optional choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _allowed(kind: Any) -> tuple[set[type], bool]:
    """The plain types a field's annotation admits, and whether it admits None."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = typing.get_args(kind)
        return {a for a in args if a is not type(None)}, type(None) in args
    return {kind}, False


@dataclass
class Config:
    """Base of every settings dataclass: checks types, ranges and choices, and reads/writes plain dicts.

    Subclass it with ``option(...)`` fields; list the fields that must be > 0 in ``positive`` and override
    ``validate`` (calling ``super().validate()``) for other rules.
    """

    positive: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types, choices and ranges; raise ``ConfigError`` naming the offending field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds, optional = _allowed(hints.get(f.name))
            if value is None and optional:
                continue
            if int in kinds and float not in kinds:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{f.name} must be an integer, got {value!r}")
                if abs(value) > MAX_INT:
                    bound = "at most 2**53" if value > 0 else "at least -2**53"
                    raise ConfigError(f"{f.name} must be {bound}, got {_short(value)}")
            if float in kinds:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
                if not math.isfinite(number):
                    raise ConfigError(f"{f.name} must be finite, got {value!r}")
                setattr(self, f.name, number)
            if str in kinds and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
            if bool in kinds and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        for name in self.positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default value."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls: type[C], data: Any, owner: str = "") -> C:
        """Build a config from a dict over the defaults, rejecting unknown keys and ill-typed values.

        ``owner`` (e.g. ``"loss iwae"``) names what the options belong to in error messages.
        """
        who = owner or cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"the options of {who} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))  # str: a JSON-like dict may mix key types
        if unknown:
            raise ConfigError(
                f"unknown option(s) for {who}: {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})"
            )
        try:
            return cls(**{**cls.defaults(), **data})
        except ConfigError as exc:
            raise ConfigError(f"{who}: {exc}" if owner else str(exc)) from None

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for every field, in declaration order."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            kinds, optional = _allowed(hints[f.name])
            kind = "|".join(sorted(k.__name__ for k in kinds)) + ("|None" if optional else "")
            help_text = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_text += f" ({', '.join(f.metadata['choices'])})"
            rows.append((f.name, kind, f.default, help_text))
        return rows


@dataclass
class ModelConfig(Config):
    """The sizes every part of a model shares. A whole-model plugin subclasses it and adds its own fields."""

    latent: int = option(16, "size of the latent code")
    image_size: int = option(28, "height and width of the (square) input images")
    image_channels: int = option(1, "channels of the input images (1 grayscale, 3 RGB)")

    positive: ClassVar[tuple[str, ...]] = ("latent", "image_size", "image_channels")
