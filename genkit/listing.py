"""The rows ``genkit list`` prints, cached so that listing needs no import of torch or of any plugin.

A plugin's description is its docstring, which only importing it gives, and every plugin imports torch
(1.5 s or more). So the rows are saved under ``$GENKIT_CACHE_DIR/plugins`` with a fingerprint of what
they were made from: each entry point, the version of the package providing it and the modification time
of the module it names (found without importing it, so an edited plugin is not shown stale). Any
difference means the plugins are loaded again; a listing with a broken plugin is never cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from genkit.files import atomic_write_bytes, cache_root

#: Set to 1 to load only genkit's own plugins, third-party entry points ignored (the registry reads it).
AUTOLOAD_ENV = "GENKIT_DISABLE_PLUGIN_AUTOLOAD"
#: Version of the cache file's layout.
_FORMAT = 1


@dataclass(frozen=True)
class Row:
    """One line of ``genkit list``: a plugin's name, description and package, or why it is broken."""

    name: str
    distribution: str
    description: str = ""
    broken: str = ""


def _module_mtime(module: str) -> int:
    """Modification time of ``module``'s source file, found without importing it (0 when not found)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return 0
    if spec is None:
        return 0
    if not rest:
        path = Path(spec.origin) if spec.origin else None
    else:
        roots = list(spec.submodule_search_locations or [])
        path = None
        for root in roots:
            base = Path(root, *rest)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    path = candidate
                    break
    try:
        return path.stat().st_mtime_ns if path is not None else 0
    except OSError:
        return 0


def fingerprint(group: str) -> list[list[str]]:
    """What a cached listing of entry-point ``group`` depends on, computed from packaging metadata only."""
    rows = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else ""
        module = ep.value.split(":")[0].strip()
        rows.append([ep.name, ep.value, str(version), str(_module_mtime(module))])
    rows.sort()
    rows.append(["env", os.environ.get(AUTOLOAD_ENV, "")])
    return rows


def _path(group: str) -> Path:
    return cache_root() / "plugins" / f"{group}.json"


def load(group: str) -> list[Row] | None:
    """The cached rows of ``group``, or ``None`` when there are none or the plugins changed since."""
    try:
        saved = json.loads(_path(group).read_text())
        if saved.get("format") != _FORMAT or saved.get("fingerprint") != fingerprint(group):
            return None
        return [Row(**row) for row in saved["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing, unreadable or foreign: list the slow way


def save(group: str, rows: list[Row]) -> None:
    """Cache ``rows`` of ``group`` (silently skipped when the cache folder is not writable)."""
    if any(row.broken for row in rows):
        return
    payload = {"format": _FORMAT, "fingerprint": fingerprint(group), "rows": [asdict(row) for row in rows]}
    try:
        atomic_write_bytes(_path(group), json.dumps(payload, indent=1).encode())
    except Exception:  # a cache that cannot be written only costs time
        pass
