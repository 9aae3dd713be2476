"""Where every benchmark writes: a JSON record and a markdown table beside it (docs include the tables)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

import genkit
from genkit.train import device_name

#: where every benchmark writes its JSON record and markdown table (``--results`` changes it, where offered)
RESULTS = Path(__file__).parent / "results"
#: the checkout whose commit a record names
ROOT = Path(__file__).parent.parent


def plural(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``: a count in a table's text."""
    return f"{n} {noun}{'s' * (n != 1)}"


def write_results(path: Path, record: dict[str, Any], table: str) -> None:
    """Write ``record`` to ``path`` (JSON) and ``table`` to the same name with ``.md``; print the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.with_suffix(".md").write_text(table)
    print(table)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record an earlier run wrote to ``path``, or None where there is none or it cannot be read (this run
    then writes a new one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def machine(record: dict[str, Any], result: dict[str, Any]) -> str:
    """The machine that measured one of ``record``'s results: results kept from an earlier run may name another
    machine of the same device kind (they do not compare in speed); older results name none, the record's."""
    return result.get("device_name", record["device_name"])


def machines(record: dict[str, Any]) -> list[str]:
    """Every machine that measured ``record``'s results, in order (the record's own while it has none)."""
    return list(dict.fromkeys(machine(record, r) for r in record["results"])) or [record["device_name"]]


def provenance(device: torch.device | str) -> dict[str, str | None]:
    """What a record's numbers were measured on and with: the device, its name, torch's and genkit's versions and
    the git commit of the code (``source_commit``)."""
    device = torch.device(device)
    return {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "genkit": genkit.__version__, "commit": source_commit()}  # fmt: skip


def source_commit(root: Path = ROOT) -> str | None:
    """The git commit of the measuring code, with ``+changes-<hash of the diff>`` when its tracked files (results
    aside) differ from it, so that two different uncommitted changes never pass for the same code; None outside a
    git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("diff", "HEAD", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + f"+changes-{hashlib.sha256(changed.encode()).hexdigest()[:12]}" * bool(changed)
