"""Run files written so that nothing is ever half-written, and read without executing code.

A run folder holds ``config.json`` (what was run), ``model.safetensors`` (weights, reloadable by registry
name without pickle), ``checkpoint.pt`` (model, optimizer, RNG state and history for ``--resume``, loaded
with ``weights_only=True``) and ``metrics.json``. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from genkit.errors import CheckpointError, ConfigError, GenkitError, RunExistsError
from genkit.files import atomic_write, atomic_write_bytes, require_regular_file
from genkit.model import PART_KINDS, Model
from genkit.parts import Part
from genkit.registry import get_model, models, priors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
#: the temporary names ``atomic_write`` gives run files (left behind only when a process is killed mid-save).
_TEMPORARY = re.compile(r"\.(config\.json|model\.safetensors|checkpoint\.pt|metrics\.json|prior-[\w.-]+)\.\d+\.tmp")


#: held by the process training into a run folder (it holds that process's PID)
LOCK_FILE = ".genkit.lock"


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process while it trains into it: a second process is refused in one line, and a
    lock left by a process that no longer runs (killed) is taken over."""
    path = Path(folder) / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise RunExistsError(
                    f"{folder} is being trained by process {owner}: wait for it to finish, or stop it first"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise RunExistsError(f"cannot take the lock {path}; remove it if no genkit process trains into {folder}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed save left in a run folder (never any other file); returns them."""
    stale = [p for p in Path(folder).iterdir() if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
    """A JSON object from ``path``; any problem is a one-line ``CheckpointError`` naming the file."""
    require_regular_file(path, "run file", CheckpointError, missing_ok=True)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: is this a genkit run folder?") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5000-digit number
        if isinstance(exc, json.JSONDecodeError) and not exc.doc.strip():
            raise CheckpointError(f"{path} is empty; restore it or start a new run") from None
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CheckpointError(f"{path} is not valid JSON ({reason}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def save_tensors(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A module's state as a safetensors file (on the CPU), written by write-then-rename."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(state, metadata=metadata))


def save_weights(model: Model, path: Path) -> None:
    """The model's weights as ``model.safetensors`` (named by its registry name in the metadata)."""
    save_tensors(model, path, metadata={"model": model.name})


#: config.json format: 1 (genkit 0.1) named only the model and, optionally, a prior; 2 names all four parts; 3: the
#: gaussian likelihood's mean reaches ``margin`` past black and white (before, it was the plain sigmoid: margin 0).
FORMAT = 3


def model_parts(model: Model) -> dict[str, dict[str, Any]]:
    """Each part's registry name and options (name None for a part a model plugin builds itself)."""
    parts = {}
    for kind in PART_KINDS:
        part = model.part(kind)
        named = isinstance(part, Part) and part.name
        parts[kind] = {"name": part.name, "options": part.config.to_dict()} if named else {"name": None, "options": {}}
    return parts


def run_config(model: Model) -> dict[str, Any]:
    """The part of ``config.json`` that rebuilds a model: its registry name, its config and its four parts."""
    from genkit import __version__

    return {
        "genkit_version": __version__,
        "format": FORMAT,
        "model": model.name,
        "model_config": model.config.to_dict(),
        "parts": model_parts(model),
    }


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings from its ``config.json`` as dotted keys: ``model``, ``model_config.latent``,
    ``parts.loss.name``, ``parts.loss.k``, ``train.lr``, ``data.dataset``... (for tables, plots and hparams)."""

    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {prefix: value}
        out: dict[str, Any] = {}
        for key, inner in value.items():
            # a part's options sit beside its name: parts.loss.k, not parts.loss.options.k
            out.update(flat(inner, prefix if key == "options" and prefix.startswith("parts.") else f"{prefix}.{key}"))
        return out

    return {k: v for key in ("model", "model_config", "parts", "train", "data") if key in config
            for k, v in flat(config[key], key).items()}  # fmt: skip


#: training settings added after runs were first written, with the value such a run trained with (the defaults
#: are now a cosine decay after a 1-epoch warm-up: a resumed older run must not switch to them)
TRAIN_SETTINGS_BEFORE = {"lr_schedule": "constant", "lr_warmup": 0}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """An older config.json read as today's (in memory): training settings it predates keep the values it trained
    with, a format-2 gaussian likelihood keeps its plain sigmoid (margin 0), and a format-1 file's noise moves from
    the training to the data settings, its KL warm-up from the training settings to the loss's options."""
    config = {**config}
    train = config.get("train")
    if isinstance(train, dict):
        config["train"] = train = {**TRAIN_SETTINGS_BEFORE, **train}
    if "parts" in config:
        parts = config["parts"]
        loss = parts.get("loss") if isinstance(parts, dict) else None
        options = loss.get("options") if isinstance(loss, dict) else None
        if config.get("format") == 2 and isinstance(options, dict) and options.get("likelihood") == "gaussian":
            config["parts"] = {**parts, "loss": {**loss, "options": {**options, "margin": 0.0}}}
        return config
    if isinstance(train, dict):
        noise, warmup = train.pop("noise", None), train.pop("kl_warmup", 0)
        if isinstance(config.get("data"), dict):
            config["data"] = {**config["data"], "noise": noise}
        if warmup:
            config["legacy_options"] = {"loss.kl_warmup": warmup}
    return config


def load_weights(model: Model, path: Path) -> None:
    """Load safetensors weights into ``model``; truncated, tampered or mismatched files are one-line errors."""
    require_regular_file(path, "weights file", CheckpointError, missing_ok=True)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise CheckpointError(f"{path} is empty; restore it, or --resume the run to write it again") from None
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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True`` so that no code in it can run."""
    require_regular_file(path, "checkpoint", CheckpointError, missing_ok=True)
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file: the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: nothing to resume (no epoch finished?); start the run again with --overwrite"
        ) from None
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:  # the pickle names a function or class: safe loading never calls it
            raise CheckpointError(
                f"{path} was refused by safe loading: it refers to {refused.group(1)}, so loading it could run code; "
                "restore it or start a new run"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a genkit checkpoint; restore it or start a new run") from None
    except Exception as exc:  # torch raises many types for truncated or tampered archives
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise CheckpointError(f"{path} is empty; restore it or start a new run") from None
        raise CheckpointError(
            f"{path} is corrupt or truncated ({type(exc).__name__}); restore it or start a new run"
        ) from None
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"{path} is not a genkit training checkpoint")
    epoch, history = state["epoch"], state.get("history", [])
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path} is tampered with: its epoch is {epoch!r}")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise CheckpointError(f"{path} is tampered with: its history is not a list of records")
    return state


def model_request(config: dict[str, Any], source: Path) -> tuple[str, dict[str, str], dict[str, Any]]:
    """What ``config`` (a run's ``config.json``, or an experiment file in its format) asks ``get_model`` for:
    the model name, the parts chosen by name, and the model and part options (``"loss.k"``-style keys)."""
    config = upgrade_config(config)
    try:
        name, options = config["model"], config["model_config"]
    except KeyError as exc:
        raise CheckpointError(f"{source} lacks the field {exc}; restore it or start a new run") from None
    if not isinstance(name, str) or not isinstance(options, dict):
        raise CheckpointError(f"{source} is damaged: model must be a name and model_config an object")
    options = {**options, **config.get("legacy_options", {})}
    parts = config.get("parts")
    if parts is None:  # format 1
        prior = config.get("prior")
        if not isinstance(prior, (str, type(None))):
            raise CheckpointError(f"{source} is damaged: prior must be a name or null")
        return name, {"prior": prior} if prior else {}, options
    chosen = {}
    if not isinstance(parts, dict) or set(parts) - set(PART_KINDS):
        raise CheckpointError(f"{source} is damaged: parts must map {', '.join(PART_KINDS)} to a name and options")
    for kind, entry in parts.items():
        if (
            not isinstance(entry, dict)
            or "name" not in entry  # null says "the model's own part"; a missing name is damage
            or not isinstance(entry["name"], (str, type(None)))
            or not isinstance(entry.get("options", {}), dict)
        ):
            raise CheckpointError(f"{source} is damaged: parts.{kind} must hold a name (or null) and options")
        if entry["name"]:
            chosen[kind] = entry["name"]
            options.update({f"{kind}.{key}": value for key, value in entry.get("options", {}).items()})
    return name, chosen, options


def build_model_from_config(config: dict[str, Any], source: Path, check: bool = True) -> Model:
    """The model a run's ``config.json`` describes (untrained), with the parts it names.

    ``check=False`` skips the compatibility check of the parts, for a finished model whose prior was fitted
    after training (e.g. a VAE with a ``gmm`` prior, which could not be trained with it).
    """
    name, chosen, options = model_request(config, source)
    try:
        model = get_model(name, **chosen, **options, check=check)
    except (GenkitError, TypeError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return model


def load_model(run_dir: str | os.PathLike[str], device: torch.device | str = "cpu") -> Model:
    """Rebuild a finished run's model by registry name from ``config.json`` and ``model.safetensors``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist")
    model = build_model_from_config(read_json(run / CONFIG_FILE), run / CONFIG_FILE, check=False)
    load_weights(model, run / WEIGHTS_FILE)
    return model.to(device).eval()


def save_run(
    model: Model, folder: str | os.PathLike[str], *, prior: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``model`` as a folder that ``load_model`` reloads: ``config.json`` and ``model.safetensors``.

    For a model trained in your own code (e.g. with ``genkit.train.Trainer``); ``genkit run`` writes these
    files itself. The folder then works with ``genkit sample``, ``encode``, ``decode`` and ``denoise`` too, but not
    with ``--resume`` (it has no training checkpoint). Each file is written to a temporary name and renamed.
    ``config.json`` records every part by registry name with its options, and the weights hold the parameters
    and buffers of all of them (a learned or fitted prior included).

    Args:
        model: a model built by ``genkit.get_model``, whose registry name (``model.name``) is recorded.
        folder: the folder to write; created if missing.
        prior: if given, the registry name the model's prior must have (a check that the prior installed after
            training, e.g. by ``genkit.priors.fit_prior``, is the one meant).
        overwrite: replace the config and weights of a folder that already holds them.

    Returns:
        The folder's path.

    Raises:
        ConfigError: the model has no registry name, or its prior is not ``prior``.
        PluginError: ``model.name`` or ``prior`` is not a registered plugin.
        RunExistsError: the folder already holds a config or weights and ``overwrite`` is false.
    """
    if not model.name:
        raise ConfigError(
            f"cannot save a {type(model).__name__} without a registry name: build it with genkit.get_model(NAME)"
        )
    models.info(model.name)  # the name must resolve now, or the folder could never be reloaded
    if prior is not None and not isinstance(model.prior, priors.load(prior)):
        raise ConfigError(
            f"prior {prior!r} does not match the model's prior ({type(model.prior).__name__}); "
            "pass the name it was built from, or None for the model's own prior"
        )
    run = Path(folder)
    if run.exists() and not run.is_dir():
        raise RunExistsError(f"{run} exists and is not a folder: choose another folder")
    taken = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if (run / name).exists()]
    if taken and not overwrite:
        raise RunExistsError(f"{run} already holds {' and '.join(taken)}: pass overwrite=True or choose another folder")
    write_json(run / CONFIG_FILE, run_config(model))
    save_weights(model, run / WEIGHTS_FILE)
    return run
