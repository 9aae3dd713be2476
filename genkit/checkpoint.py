"""Run files written so that nothing is ever half-written, and read without executing code.

A run folder holds ``config.json`` (what was run), ``model.safetensors`` (weights, reloadable by registry
name without pickle), ``checkpoint.pt`` (model, optimizer, RNG state and history for ``--resume``, loaded
with ``weights_only=True``) and ``metrics.json``. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genkit.errors import CheckpointError, GenkitError
from genkit.model import Model
from genkit.registry import get_model, get_prior

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(_json_ready(data), indent=2) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; any problem is a one-line :class:`CheckpointError` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: is this a genkit run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def save_weights(model: Model, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"model": model.name}))


def load_weights(model: Model, path: Path) -> None:
    """Load safetensors weights into ``model``; truncated, tampered or mismatched files are one-line errors."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from None
    _load_state(model, state, path)


def _load_state(model: Model, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{path} does not fit model {model.name!r} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} mis-shaped tensors, e.g. {first}); was it written for another model or config?"
        )
    model.load_state_dict(state)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True`` so that no code in it can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: nothing to resume") from None
    except Exception as exc:  # torch raises many types for truncated or tampered archives
        raise CheckpointError(f"{path} is corrupt or not a genkit checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"{path} is not a genkit training checkpoint")
    return state


def build_model_from_config(config: dict[str, Any], source: Path) -> Model:
    """The model a run's ``config.json`` describes (untrained), with the prior it names."""
    try:
        name, options = config["model"], config["model_config"]
    except KeyError as exc:
        raise CheckpointError(f"{source} lacks the field {exc}; restore it or start a new run") from None
    try:
        model = get_model(name, **options)
        prior = config.get("prior")
        if prior:
            model.prior = get_prior(prior, model.config.latent)
    except (GenkitError, TypeError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return model


def load_model(run_dir: str | os.PathLike[str], device: torch.device | str = "cpu") -> Model:
    """Rebuild a finished run's model by registry name from ``config.json`` and ``model.safetensors``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist")
    model = build_model_from_config(read_json(run / CONFIG_FILE), run / CONFIG_FILE)
    load_weights(model, run / WEIGHTS_FILE)
    return model.to(device).eval()
