"""Typed configuration: one ``Config`` base for model, part, training, data and logging settings (dict round trips,
validation)."""

from __future__ import annotations

import dataclasses
import json
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


def parse_value(text: str) -> Any:
    """A command-line value read as JSON (numbers, true/false, null) and otherwise kept as text; the config that
    receives it checks its type (a number too long for JSON stays text too)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


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

    Subclass it with ``option(...)`` fields; list the fields that must be > 0 in ``positive`` (>= 0 in
    ``non_negative``) and override ``validate`` (calling ``super().validate()``) for other rules.
    """

    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()

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
        for name in self.non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")

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


#: per-epoch seeds are derived from the seed; beyond this torch's generators overflow
SEED_LIMIT = 2**40
DEVICES = ("cpu", "cuda", "mps")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig(Config):
    """How to train: the same options for every model (``genkit run`` takes each as ``--OPTION``)."""

    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(128, "images per step (the global batch when several processes train)")
    lr: float = option(2e-3, "Adam's learning rate")
    lr_schedule: str = option("cosine", "cosine decays the learning rate to 0 over the run", LR_SCHEDULES)
    lr_warmup: int = option(1, "epochs over which the learning rate ramps linearly from 0 (deep nets at high lr)")
    binarize: bool = option(
        False, "train on Bernoulli draws of the grey levels, new ones each epoch (the IWAE paper's MNIST protocol)"
    )
    seed: int = option(0, "fixes initialisation, shuffling, noise, the loss's draws and sampling")
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    amp: bool | None = option(
        None, "bf16 autocast: unset (null) on CUDA only, on (true) on the CPU too, off (false) never"
    )
    compile: bool = option(False, "torch.compile the loss computation (pays off on GPUs for long runs)")
    channels_last: bool = option(False, "convert 4-d weights to channels-last (opt-in: a .view() after a conv fails)")
    progress: bool | None = option(None, "show a progress bar: unset (null) when stderr is a terminal")
    eval_batch_size: int = option(1000, "images per batch when evaluating")
    workers: int = option(2, "DataLoader worker processes for a dataset streamed from disk (--stream)")

    positive: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "lr", "eval_batch_size")
    non_negative: ClassVar[tuple[str, ...]] = ("workers", "lr_warmup")

    def validate(self) -> None:
        super().validate()
        if abs(self.seed) >= SEED_LIMIT:
            raise ConfigError(f"seed must be an integer between -2**40 and 2**40, got {self.seed!r}")
        if self.device != "auto" and self.device.split(":")[0] not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")


#: how ``latent.png`` draws codes of more than two dimensions
LATENT_PLOTS = ("tsne", "pca")


@dataclass
class DataConfig(Config):
    """What a run trains and is scored on (``config.json``'s ``data`` section)."""

    dataset: str = option("mnist", "a registered dataset (genkit list --kind datasets) or a folder of images")
    data_dir: str | None = option(None, f"where datasets live [default: ${DATA_ENV}, else downloaded]")
    limit: int | None = option(None, "use at most N training and N test images (quick runs)")
    stream: bool = option(False, "read an image folder's training images from disk every epoch, not held in memory")
    noise: str | None = option(None, "train a denoiser on inputs with this noise, e.g. gaussian:0.5")

    def validate(self) -> None:
        super().validate()
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")


@dataclass
class LoggingConfig(Config):
    """What a run writes besides its results (``config.json``'s ``logging`` section)."""

    tensorboard: bool = option(False, "also write TensorBoard logs to RUN/tensorboard (the tensorboard extra)")
    latent_plot: str = option("tsne", "how latent.png draws codes of more than two dimensions", LATENT_PLOTS)
