"""Where every benchmark writes: a JSON record and a markdown table beside it (docs include the tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, record: dict[str, Any], table: str) -> None:
    """Write ``record`` to ``path`` (JSON) and ``table`` to the same name with ``.md``; print the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.with_suffix(".md").write_text(table)
    print(table)
