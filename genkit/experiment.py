"""Experiments from files: ``genkit run --config exp.toml``, or a finished run's ``config.json`` to repeat it.

An experiment file has the layout of ``config.json`` (TOML, JSON, or YAML when PyYAML is installed)::

    model = "vae-conv"
    [model_config]
    latent = 16
    [parts.loss]
    name = "iwae"
    options = { k = 5 }
    [train]
    epochs = 10
    [data]
    dataset = "mnist"

Every section but ``model`` may be left out; options given on the command line override the file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genkit.checkpoint import TRAIN_SETTINGS_BEFORE, model_request
from genkit.config import DataConfig, LoggingConfig
from genkit.errors import CheckpointError, ConfigError
from genkit.files import require_regular_file
from genkit.train import TrainConfig

#: the sections of an experiment file (``genkit_version`` and ``format`` are what config.json records besides)
SECTIONS = ("model", "model_config", "parts", "train", "data", "logging", "genkit_version", "format")


@dataclass
class Experiment:
    """What an experiment file asks for, in the terms of ``genkit.run.start_run``."""

    model: str
    parts: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  #: model options and ``"part.key"`` options
    #: the fields of TrainConfig, DataConfig and LoggingConfig the file sets (the command line's go on top)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    logging: dict[str, Any] = field(default_factory=dict)


def read_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every problem is a one-line ``ConfigError`` naming the file."""
    path = require_regular_file(path, "config file", ConfigError)
    content = _parse(path)
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a table of settings, found {type(content).__name__}")
    if "genkit_version" in content and isinstance(content.get("train"), dict):  # a run's config.json: repeated
        content["train"] = {**TRAIN_SETTINGS_BEFORE, **content["train"]}  # with the settings it trained with
    unknown = sorted(map(str, set(content) - set(SECTIONS)))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(SECTIONS[:6])})")
    if not isinstance(content.get("model"), str):
        raise ConfigError(f'{path} must name the model: model = "NAME" (see genkit list)')
    try:
        model, parts, options = model_request({"model_config": {}, **content}, path)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    configs = {"train": TrainConfig, "data": DataConfig, "logging": LoggingConfig}
    tables = {key: _table(content, key, path) for key in configs}
    for key, config in configs.items():  # checked here, used with the command line's on top
        config.from_dict(tables[key], owner=f"{path} [{key}]")
    return Experiment(model, parts, options, **tables)


def _parse(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
            return yaml.safe_load(text)
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean a malformed file
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {reason}") from None
    raise ConfigError(f"{path}: give a .toml, .json or .yaml file")


def _table(content: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = content.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a table of settings, found {type(value).__name__}")
    return value
