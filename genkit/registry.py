"""Plugin registries fed by Python entry points.

Finding is separate from loading: listing names reads only packaging metadata; a plugin's module is
imported the first time it is used. genkit's own built-ins are declared in genkit's packaging metadata and
found exactly like a third-party package's. A plugin that fails to import or build is reported as
``distribution[name]: reason`` and never breaks the others.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

from genkit.config import ModelConfig
from genkit.data import DatasetSource
from genkit.errors import ConfigError, GenkitError, PluginError, UnknownPluginError
from genkit.listing import AUTOLOAD_ENV
from genkit.losses import likelihood_of
from genkit.model import Model, Preset, doc_summary
from genkit.noise import NoiseTransform
from genkit.parts import Decoder, Encoder, Loss, Part, Prior

#: Seconds a plugin's module may take to import before it is flagged as hanging (the environment variable
#: ``GENKIT_PLUGIN_IMPORT_TIMEOUT`` overrides it).
IMPORT_TIMEOUT = 60.0
TIMEOUT_ENV = "GENKIT_PLUGIN_IMPORT_TIMEOUT"
#: A plugin name: it is typed on command lines and names files and folders (runs/NAME-DATASET), so no paths.
VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*")
OWN_DISTRIBUTION = "genkit"
LOCAL = "<local>"


def _close_names(name: str, known: Iterable[str]) -> list[str]:
    """Up to three known names a typo most likely meant: similar (difflib ratio ≥ 0.6) and within 0.2 of the best,
    so that ``betavae`` suggests beta-vae and beta-tcvae but not aae, and ``gausian`` no unrelated prior."""
    scored = sorted(((difflib.SequenceMatcher(None, name, k).ratio(), k) for k in known), reverse=True)
    scored = [(r, k) for r, k in scored if r >= 0.6]
    return [k for r, k in scored[:3] if r >= scored[0][0] - 0.2]


@dataclass(frozen=True)
class PluginInfo:
    """A plugin found but not yet loaded."""

    group: str
    name: str
    distribution: str
    target: str
    load_target: Callable[[], Any]

    def label(self) -> str:
        return f"{self.distribution}[{self.name}]"


class FailedPlugin(PluginError):
    """A plugin that could not be imported, built or validated, naming its distribution."""

    def __init__(self, plugin: PluginInfo, reason: str) -> None:
        super().__init__(f"{plugin.label()}: {reason}")
        self.plugin = plugin
        self.reason = reason


def _distribution_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    return name if isinstance(name, str) and name else "unknown"  # a distribution without a Name


_IMPORT_THREAD = "genkit-import-"


class ExitCalled(BaseException):
    """What ``os._exit`` raises in a plugin-import thread instead of ending the process."""


def _guard_os_exit() -> None:
    """Make ``os._exit`` called by a module being imported in a plugin-import thread raise instead of ending the
    process (once, for good; any other caller still gets the real ``os._exit``)."""
    real = os._exit
    if getattr(real, "genkit_guard", False):
        return

    def guarded(status: int) -> None:
        if threading.current_thread().name.startswith(_IMPORT_THREAD):
            raise ExitCalled(f"os._exit({status})")
        real(status)

    guarded.genkit_guard = True  # type: ignore[attr-defined]
    os._exit = guarded  # type: ignore[assignment]


def _import(info: PluginInfo) -> Any:
    """Import a plugin's object in a helper thread, so that a module that exits (``SystemExit``, ``os._exit``)
    or waits forever at import is reported as a failed plugin (after ``IMPORT_TIMEOUT`` seconds) instead of
    ending or hanging genkit."""
    _guard_os_exit()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["object"] = info.load_target()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"{_IMPORT_THREAD}{info.name}", daemon=True)
    thread.start()
    thread.join(float(os.environ.get(TIMEOUT_ENV) or IMPORT_TIMEOUT))
    if thread.is_alive():
        raise FailedPlugin(info, f"importing {info.target} did not finish in time; the plugin waits or hangs")
    error = result.get("error")
    if isinstance(error, KeyboardInterrupt):
        raise error
    if error is not None:
        raise FailedPlugin(info, f"failed to load {info.target}: {type(error).__name__}: {_first(error)}") from error
    return result["object"]


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class Registry:
    """Named plugins of one kind (one entry-point group), each expected to be a subclass of ``base``."""

    def __init__(self, group: str, base: type, instance_of: type | None = None) -> None:
        self.group = group
        self.base = base
        self.instance_of = instance_of  # registered objects may also be instances of this (a model Preset)
        self._found: dict[str, list[PluginInfo]] | None = None
        self._local: dict[str, PluginInfo] = {}
        self._loaded: dict[str, Any] = {}
        self._failed: dict[str, FailedPlugin] = {}  # so that a plugin that hangs costs its wait once

    @property
    def kind(self) -> str:
        """The kind of plugin, as messages and ``genkit list --kind`` name it: ``priors`` for ``genkit.priors``."""
        return self.group.split(".")[-1]

    def refresh(self) -> None:
        """Forget what was found and loaded (after installing a package at run time)."""
        self._found = None
        self._loaded.clear()
        self._failed.clear()

    def _find(self) -> dict[str, list[PluginInfo]]:
        if self._found is None:
            own_only = os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0")
            found: dict[str, list[PluginInfo]] = {}
            for ep in metadata.entry_points(group=self.group):
                dist = _distribution_name(ep)
                if own_only and _normalise(dist) != OWN_DISTRIBUTION:
                    continue
                info = PluginInfo(self.group, ep.name, dist, ep.value, ep.load)
                claims = found.setdefault(ep.name, [])
                if all(_normalise(c.distribution) != _normalise(dist) for c in claims):
                    claims.append(info)
            self._found = found
        return {**self._found, **{name: [info] for name, info in self._local.items()}}

    def register(self, name: str, obj: Any, distribution: str = LOCAL) -> None:
        """Register ``obj`` under ``name`` in this process (for code that builds plugins on the fly)."""
        if name in self._find():
            owners = " and ".join(c.distribution for c in self._find()[name])
            raise PluginError(f"{self.group}: name {name!r} is already provided by {owners}")
        self._local[name] = PluginInfo(self.group, name, distribution, repr(obj), lambda: obj)

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)
        self._loaded.pop(name, None)
        self._failed.pop(name, None)

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted plugin names, optionally filtered by an fnmatch ``pattern`` (e.g. ``"*vae*"``)."""
        names = sorted(self._find())
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def info(self, name: str) -> PluginInfo:
        """The one plugin registered as ``name``; an error for unknown or doubly claimed names."""
        found = self._find()
        if name not in found:
            kind = self.kind
            for other in KINDS.values():  # e.g. a prior asked for as a model: name the kind that has it
                if other.kind != kind and name in other.names():
                    raise UnknownPluginError(
                        f"unknown {kind} plugin {name!r}; it is one of the {other.kind}: "
                        f"genkit info {name} --kind {other.kind}"
                    )
            close = _close_names(str(name), found)
            close = close or [n for n in found if str(name).lower() == n.lower()]  # e.g. AE for ae
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(found)) or 'none'}"
            raise UnknownPluginError(f"unknown {kind} plugin {name!r}; {hint}")
        claims = found[name]
        if len(claims) > 1:
            owners = " and ".join(c.distribution for c in claims)
            raise PluginError(f"{self.group}: name {name!r} is claimed by both {owners}; uninstall one of them")
        return claims[0]

    def load(self, name: str) -> Any:
        """Import the plugin (once) and check that it is a subclass of the registry's base."""
        if name in self._failed:
            raise self._failed[name]
        if name not in self._loaded:
            info = self.info(name)
            try:
                self._loaded[name] = self._checked(info, name)
            except FailedPlugin as exc:
                self._failed[name] = exc
                raise
        return self._loaded[name]

    def _checked(self, info: PluginInfo, name: str) -> Any:
        if not VALID_NAME.fullmatch(name):
            raise FailedPlugin(info, f"{name!r} is not a valid plugin name: use letters, digits, '-', '_', '.'")
        obj = _import(info)
        if not (isinstance(obj, type) and issubclass(obj, self.base)) and not (
            self.instance_of is not None and isinstance(obj, self.instance_of)
        ):
            what = f"{self.base.__module__}.{self.base.__name__}"
            if self.instance_of is not None:
                what += f" nor a {self.instance_of.__module__}.{self.instance_of.__name__}"
            raise FailedPlugin(info, f"{info.target} is not a subclass of {what}")
        return obj

    def name_of(self, obj: Any) -> str | None:
        """The name ``obj`` is registered under, or None; loads the other plugins only if none loaded so far is it."""
        for name, loaded in self._loaded.items():
            if loaded is obj:
                return name
        return next((info.name for info, loaded in self.status() if loaded is obj), None)

    def status(self) -> list[tuple[PluginInfo, Any | FailedPlugin]]:
        """Every plugin with its loaded object, or the error that loading it raised."""
        rows: list[tuple[PluginInfo, Any | FailedPlugin]] = []
        for name, claims in sorted(self._find().items()):
            for info in claims:
                try:
                    rows.append((info, self.load(name)))
                except PluginError as exc:
                    rows.append((info, exc if isinstance(exc, FailedPlugin) else FailedPlugin(info, str(exc))))
        return rows


models = Registry("genkit.models", Model, Preset)
encoders = Registry("genkit.encoders", Encoder)
decoders = Registry("genkit.decoders", Decoder)
priors = Registry("genkit.priors", Prior)
losses = Registry("genkit.losses", Loss)
noise = Registry("genkit.noise", NoiseTransform)
datasets = Registry("genkit.datasets", DatasetSource)
#: the registry of each part kind
PARTS: dict[str, Registry] = {"encoder": encoders, "decoder": decoders, "prior": priors, "loss": losses}
#: every registry by its kind, as `genkit list --kind` names them (to refresh them all after an install at run time)
KINDS: dict[str, Registry] = {r.kind: r for r in (models, *PARTS.values(), noise, datasets)}


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models (no plugin is imported), optionally fnmatch-filtered."""
    return models.names(pattern)


def get_model_class(name: str) -> type[Model] | Preset:
    """What the model ``name`` is registered as: a ``Model`` subclass or a ``Preset``."""
    return models.load(name)


def describe(obj: Any) -> str:
    """The one-line description of a registered object (a preset's, or its docstring's first line)."""
    return obj.description if isinstance(obj, Preset) else doc_summary(obj)


def build_part(kind: str, name: str, options: dict[str, Any] | None = None, dims: ModelConfig | None = None) -> Any:
    """Build the registered part ``name`` of ``kind`` (encoder, decoder, prior, loss) with ``options``."""
    registry = PARTS[kind]
    cls = registry.load(name)
    config = cls.config_class.from_dict(dict(options or {}), owner=f"{kind} {name}")
    try:
        part = cls(config, dims or ModelConfig())
    except GenkitError:
        raise
    except Exception as exc:
        raise FailedPlugin(registry.info(name), f"failed to build: {type(exc).__name__}: {_first(exc)}") from exc
    part.name = name
    return part


def part_name(kind: str, part: Any) -> str | None:
    """The registry name of ``part``'s class among the ``kind`` plugins, or None if it is not registered."""
    return getattr(part, "name", "") or PARTS[kind].name_of(type(part))


def get_encoder(name: str, dims: ModelConfig | None = None, **options: Any) -> Encoder:
    """Build the registered encoder ``name`` for ``dims`` (latent size and image shape; default ``ModelConfig()``)."""
    return build_part("encoder", name, options, dims)


def get_decoder(name: str, dims: ModelConfig | None = None, **options: Any) -> Decoder:
    """Build the registered decoder ``name`` for ``dims`` (latent size and image shape)."""
    return build_part("decoder", name, options, dims)


def get_prior(name: str, latent: int | None = None, dims: ModelConfig | None = None, **options: Any) -> Prior:
    """Build the registered prior ``name`` over a latent of size ``latent`` (or for the sizes ``dims``)."""
    if dims is None:
        dims = ModelConfig() if latent is None else ModelConfig(latent=latent)
    return build_part("prior", name, options, dims)


def get_loss(name: str, **options: Any) -> Loss:
    """Build the registered loss ``name`` with ``options`` (e.g. ``get_loss("iwae", k=5)``)."""
    return build_part("loss", name, options)


def get_model(
    name: str,
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    prior: str | None = None,
    loss: str | None = None,
    check: bool = True,
    **options: Any,
) -> Model:
    """Build the registered model ``name``, optionally with other parts chosen by registry name.

    ``options`` are model options (``latent=16``) and part options as ``"PART.KEY"`` keys, the same as
    ``genkit run --set``: ``get_model("vae-conv", prior="vamp", loss="iwae", **{"loss.k": 5})``. A plain key that
    is not a model option sets that option of every part that has it (``channels=64`` sets the encoder's and
    the decoder's). Options left ``None`` keep the defaults. Incompatible parts raise ``ConfigError`` (``check``
    False skips that test, for reloading a finished model whose prior was fitted after training).
    """
    target = models.load(name)
    chosen = {k: v for k, v in {"encoder": encoder, "decoder": decoder, "prior": prior, "loss": loss}.items() if v}
    plain: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if value is None:
            continue
        kind, dot, field = str(key).partition(".")
        if not dot:
            plain[key] = value
        elif kind in PARTS and field:
            dotted.setdefault(kind, {})[field] = value
        else:
            raise ConfigError(f"bad option {key!r}: write KEY or PART.KEY with PART one of {', '.join(PARTS)}")
    if isinstance(target, Preset):
        model = _compose(name, target, chosen, plain, dotted)
    else:
        model = _build_subclass(name, target, chosen, plain, dotted)
    model.name = name
    model.plugin = models.info(name).label()
    if check:
        model.check_parts()
    return model


def _compose(
    name: str, preset: Preset, chosen: dict[str, str], plain: dict[str, Any], dotted: dict[str, dict[str, Any]]
) -> Model:
    names = {**preset.parts(), **chosen}
    classes = {kind: PARTS[kind].load(part) for kind, part in names.items()}
    fields = {kind: set(cls.config_class.defaults()) for kind, cls in classes.items()}
    model_fields = set(ModelConfig.defaults())
    stray = sorted(k for k in plain if k not in model_fields and not any(k in f for f in fields.values()))
    if stray:
        raise ConfigError(
            f"unknown option {stray[0]!r} for model {name} with parts {', '.join(names.values())}: "
            f"see genkit info {name} (part options are --set PART.KEY=VALUE)"
        )
    dims = ModelConfig.from_dict(
        {**preset.options.get("model", {}), **{k: v for k, v in plain.items() if k in model_fields}},
        owner=f"model {name}",
    )
    options = {
        kind: {
            **{k: v for k, v in preset.options.get(kind, {}).items() if k in fields[kind]},
            **{k: v for k, v in plain.items() if k in fields[kind]},
            **dotted.get(kind, {}),
        }
        for kind in names
    }
    # the loss's likelihood sets the decoder's outputs per pixel (two when it also predicts each pixel's scale)
    loss_config = classes["loss"].config_class.from_dict(dict(options["loss"]), owner=f"loss {names['loss']}")
    outputs = likelihood_of(loss_config).outputs
    decoder_dims = replace(dims, image_channels=dims.image_channels * outputs)
    parts = {
        kind: build_part(kind, part, options[kind], decoder_dims if kind == "decoder" else dims)
        for kind, part in names.items()
    }
    model = Model(dims, **parts)
    model.description = preset.description
    return model


def _build_subclass(
    name: str, cls: type[Model], chosen: dict[str, str], plain: dict[str, Any], dotted: dict[str, dict[str, Any]]
) -> Model:
    config = cls.config_class.from_dict(plain, owner=f"model {name}")
    try:
        model = cls(config)
    except GenkitError:
        raise
    except Exception as exc:
        raise FailedPlugin(models.info(name), f"failed to build: {type(exc).__name__}: {_first(exc)}") from exc
    model.description = cls.describe()
    for kind in PARTS:
        current = model.part(kind)
        if kind not in chosen and kind not in dotted:
            if isinstance(current, Part) and not current.name:
                current.name = part_name(kind, current) or ""
            continue
        native = part_name(kind, current) if isinstance(current, Part) else None
        part = chosen.get(kind) or native
        if part is None:
            raise ConfigError(
                f"the {kind} of model {name} is built by the model itself and has no options; "
                f"choose a registered one with --{kind} NAME (genkit list --kind {kind}s)"
            )
        keep = current.config.to_dict() if kind not in chosen and isinstance(current, Part) else {}
        setattr(
            model,
            "loss_fn" if kind == "loss" else kind,
            build_part(kind, part, {**keep, **dotted.get(kind, {})}, config),
        )
    return model


def _first(exc: BaseException) -> str:
    """The first line of an exception's message (torch appends C++ stack frames to some)."""
    return (str(exc).strip().splitlines() or [""])[0]


def get_noise(spec: str) -> NoiseTransform:
    """Parse a noise spec ``NAME:LEVEL`` (e.g. ``gaussian:0.5``) into its transform."""
    if not isinstance(spec, str):
        raise ConfigError(f"a noise spec must be text such as gaussian:0.5, got {spec!r}")
    name, sep, level = spec.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"bad noise spec {spec!r}: write NAME:LEVEL, e.g. gaussian:0.5 (names: {', '.join(noise.names())})"
        )
    try:
        value = float(level)
    except ValueError:
        raise ConfigError(f"bad noise level {level!r} in {spec!r}: give a number, e.g. gaussian:0.5") from None
    if not math.isfinite(value):
        raise ConfigError(f"bad noise level {level!r} in {spec!r}: give a finite number, e.g. gaussian:0.5")
    transform = noise.load(name)(value)
    transform.name = name
    return transform
