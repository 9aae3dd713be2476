"""mkdocs hooks for genkit's docs (named in ``mkdocs.yml``); all text they insert comes from the repository.

* ``<!-- genkit: benchmark-results -->`` becomes the markdown tables that ``python -m benchmarks.suite`` wrote
  to ``benchmarks/results/*.md`` (headings moved two levels down), or a note that none are committed yet.
* ``<!-- genkit: benchmark-protocols -->`` becomes a table of ``benchmarks.suite.PROTOCOLS``.
* ``<!-- genkit: api-if-present MODULE -->`` becomes ``::: MODULE`` when MODULE can be imported, else a note.
* Sphinx roles in docstrings (``:class:`X```, ``:func:`~a.b```) are shown as plain code.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.genkit")

MARKER = re.compile(r"^<!-- genkit: (?P<what>[\w-]+)(?: (?P<arg>[\w.]+))? -->$", re.MULTILINE)
ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(?P<tilde>~?)(?P<target>[^<]*)</code>"
)


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def benchmark_results(root: Path) -> str:
    files = sorted((root / "benchmarks" / "results").glob("*.md"))
    if not files:
        return (
            "No benchmark results have been committed yet. Run `nox -s bench-quick` (or "
            "`python -m benchmarks.suite --protocol quick --dataset mnist`) and commit the files it writes to "
            "`benchmarks/results/`; this page then shows their tables.\n"
        )
    parts = []
    for path in files:
        text = re.sub(r"^(#+) ", r"##\1 ", path.read_text(), flags=re.MULTILINE)  # under "## Latest results"
        parts.append(f"{text.rstrip()}\n\n*From `benchmarks/results/{path.name}`.*\n")
    return "\n".join(parts)


def benchmark_protocols(root: Path) -> str:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks.suite import PROTOCOLS, warmup_text
    except Exception as exc:
        log.warning("cannot import benchmarks.suite for the protocol table: %s: %s", type(exc).__name__, exc)
        return ""
    rows = [
        "| protocol | latent | epochs | batch | lr | train images | test images | FID samples | ex-post priors "
        "| NLL samples | models |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in PROTOCOLS.items():
        models = "<br>".join(f"`{e.label}`" for e in p.entries)
        priors = ", ".join(f"{e} ({p.gmm_components})" if e == "gmm" else e for e in p.ex_post) or "—"
        rows.append(
            f"| `{name}` | {p.latent} | {p.epochs} | {p.batch_size} "
            f"| {p.lr:g} {p.lr_schedule}{warmup_text(p.lr_warmup)} "
            f"| {p.train_limit or 'all'}{' (binarised)' * p.binarize} | {p.test_limit or 'all'} | {p.fid_samples} "
            f"| {priors} | {p.nll_samples or '—'} | {models} |"
        )
    return "\n".join(rows) + "\n"


def api_if_present(module: str) -> str:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return f"::: {module}\n"
    log.info("%s is not importable; its API section is left out", module)
    return f"*`{module}` is not part of this checkout.*\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = _root(config)

    def replace(match: re.Match[str]) -> str:
        what, arg = match["what"], match["arg"]
        if what == "benchmark-results":
            return benchmark_results(root)
        if what == "benchmark-protocols":
            return benchmark_protocols(root)
        if what == "api-if-present" and arg:
            return api_if_present(arg)
        log.warning("%s: unknown marker %r", page.file.src_path, match.group(0))
        return match.group(0)

    return MARKER.sub(replace, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    def plain(match: re.Match[str]) -> str:
        target = match["target"]
        return f"<code>{target.rsplit('.', 1)[-1] if match['tilde'] else target}</code>"

    return ROLE.sub(plain, html)
