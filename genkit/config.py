"""Typed model configuration: a dataclass per model, with dict round trips and validation."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from genkit.errors import ConfigError

C = TypeVar("C", bound="ModelConfig")


def option(default: Any, help: str) -> Any:
    """A config field with a default and a one-line help text (shown by ``genkit info``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """Fields every model shares. Subclass it beside each model and add the model's own fields."""

    latent: int = option(16, "size of the latent code")
    image_size: int = option(28, "height and width of the (square) input images")
    image_channels: int = option(1, "channels of the input images (1 grayscale, 3 RGB)")

    positive: ClassVar[tuple[str, ...]] = ("latent", "image_size", "image_channels")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types and ranges; raise ``ConfigError`` with the offending field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = hints.get(f.name)
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
                if not math.isfinite(number):
                    raise ConfigError(f"{f.name} must be finite, got {value!r}")
                setattr(self, f.name, number)
            if kind is str and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
        for name in self.positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Any) -> C:
        """Build a config from a dict, rejecting unknown keys and ill-typed values."""
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))  # str: a JSON-like dict may mix key types
        if unknown:
            raise ConfigError(
                f"unknown option(s) for {cls.__name__}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**data)

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for every field, in declaration order."""
        hints = typing.get_type_hints(cls)
        return [
            (f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]
