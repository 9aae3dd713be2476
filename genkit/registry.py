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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from genkit.errors import ConfigError, GenkitError, PluginError, UnknownPluginError
from genkit.model import Model
from genkit.noise import NoiseTransform
from genkit.parts import Loss, Prior

#: Set to 1 to load only genkit's own plugins (third-party entry points are ignored).
AUTOLOAD_ENV = "GENKIT_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "genkit"
LOCAL = "<local>"


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
    return dist.metadata["Name"] if dist is not None else "unknown"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class Registry:
    """Named plugins of one kind (one entry-point group), each expected to be a subclass of ``base``."""

    def __init__(self, group: str, base: type) -> None:
        self.group = group
        self.base = base
        self._found: dict[str, list[PluginInfo]] | None = None
        self._local: dict[str, PluginInfo] = {}
        self._loaded: dict[str, Any] = {}

    def refresh(self) -> None:
        """Forget what was found and loaded (after installing a package at run time)."""
        self._found = None
        self._loaded.clear()

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

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted plugin names, optionally filtered by an fnmatch ``pattern`` (e.g. ``"*vae*"``)."""
        names = sorted(self._find())
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def info(self, name: str) -> PluginInfo:
        """The one plugin registered as ``name``; an error for unknown or doubly claimed names."""
        found = self._find()
        if name not in found:
            close = difflib.get_close_matches(name, list(found), n=3, cutoff=0.5)
            close = close or [n for n in found if str(name).lower() == n.lower()]  # e.g. AE for ae
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(found)) or 'none'}"
            raise UnknownPluginError(f"unknown {self.group.split('.')[-1]} plugin {name!r}; {hint}")
        claims = found[name]
        if len(claims) > 1:
            owners = " and ".join(c.distribution for c in claims)
            raise PluginError(f"{self.group}: name {name!r} is claimed by both {owners}; uninstall one of them")
        return claims[0]

    def load(self, name: str) -> Any:
        """Import the plugin (once) and check that it is a subclass of the registry's base."""
        if name not in self._loaded:
            info = self.info(name)
            try:
                obj = info.load_target()
            except Exception as exc:  # any import-time failure of a third-party module
                raise FailedPlugin(info, f"failed to load {info.target}: {type(exc).__name__}: {exc}") from exc
            if not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise FailedPlugin(
                    info, f"{info.target} is not a subclass of {self.base.__module__}.{self.base.__name__}"
                )
            self._loaded[name] = obj
        return self._loaded[name]

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


models = Registry("genkit.models", Model)
priors = Registry("genkit.priors", Prior)
losses = Registry("genkit.losses", Loss)
noise = Registry("genkit.noise", NoiseTransform)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models (no plugin is imported), optionally fnmatch-filtered."""
    return models.names(pattern)


def get_model_class(name: str) -> type[Model]:
    """The model class registered as ``name``."""
    return models.load(name)


def get_model(name: str, **overrides: Any) -> Model:
    """Build the registered model ``name``; options left ``None`` keep the model's defaults."""
    cls = get_model_class(name)
    options = {k: v for k, v in overrides.items() if v is not None}
    config = cls.config_class.from_dict({**cls.config_class().to_dict(), **options})
    try:
        model = cls(config)
    except (GenkitError, ConfigError):
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]  # torch appends C++ stack frames to some errors
        raise FailedPlugin(models.info(name), f"failed to build: {type(exc).__name__}: {reason}") from exc
    model.name = name
    model.plugin = models.info(name).label()
    return model


def get_prior(name: str, latent: int) -> Prior:
    """Build the registered prior ``name`` over a latent of size ``latent``."""
    return priors.load(name)(latent)


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
