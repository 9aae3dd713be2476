"""The documentation under docs/ is tested like code.

* Every ```python block runs: each page's blocks in order, in one namespace, in an empty temporary folder.
* Every ``genkit`` command in a ```bash or ```console block is parsed by the real click commands; the cheap ones
  (``list``, ``info``, ``--help``, ``--version``) are run, and the output a ```console block shows is compared
  with what the command prints. A block right after ``<!-- test: run -->`` is run whole (it trains on MNIST, so
  it needs ``$GENKIT_DATA_DIR``).
* Files included with ``--8<-- "path"`` (pymdownx.snippets) and pictures exist; ``docs/make_pictures.py`` works.
* ``mkdocs build --strict`` succeeds, when mkdocs and its plugins are installed (``pip install -e .[docs]``).
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from genkit import registry
from genkit.cli import cli, main
from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "images" not in p.relative_to(DOCS).parts)
#: Put on sys.path while a page runs, so that a page can import the example plugin as an installed user would.
EXAMPLE_PLUGIN = ROOT / "plugins" / "example-mlp-vae"
#: The example package of parts (one of every kind, and a preset), whose files the plugin page shows too.
EXAMPLE_PARTS = ROOT / "plugins" / "example-parts"
#: The files of the example packages that the plugin page includes whole (and the built page shows).
PLUGIN_PAGE_FILES = {
    EXAMPLE_PLUGIN: ["pyproject.toml", "genkit_mlp_vae/__init__.py", "tests/test_conformance.py"],
    EXAMPLE_PARTS: [
        "pyproject.toml",
        *(f"genkit_example_parts/{m}.py" for m in ("linear", "laplace", "elbo_l1", "presets", "cutout")),
        "tests/test_conformance.py",
    ],
}
#: Subcommands (or options) that are cheap and side-effect free: docs examples using them are run, not just parsed.
CHEAP = {"list", "info", "--help", "-h", "--version"}

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
SNIPPET = re.compile(r'^(?P<indent>\s*)--8<--\s+"(?P<path>[^"]+)"\s*$')
SNIPPET_BLOCK = re.compile(r"^(?P<indent>\s*)--8<--\s*$")
MARKER = re.compile(r"^<!-- test: (?P<what>[\w-]+) -->$")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")


@dataclass
class Block:
    """A fenced code block of a page, with pymdownx.snippets includes expanded."""

    page: Path
    line: int  # line of the page on which the block's code starts (1-based)
    lang: str
    code: str
    marker: str | None  # "run" after <!-- test: run -->
    include: Path | None  # the included file, when the block is exactly one snippet line

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def expand(lines: list[str]) -> tuple[list[str], list[Path]]:
    """Lines with pymdownx.snippets includes replaced by the files they name, and those files.

    Both forms are understood: ``--8<-- "path"`` on one line, and a block of paths between two ``--8<--`` lines
    (the form used inside ```python blocks, which ruff's formatter leaves alone).
    """
    out: list[str] = []
    files: list[Path] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        single, block = SNIPPET.match(line), SNIPPET_BLOCK.match(line)
        if single:
            indent, paths = single["indent"], [single["path"]]
        elif block:
            end = next((j for j in range(i + 1, len(lines)) if SNIPPET_BLOCK.match(lines[j])), None)
            assert end is not None, f"unclosed --8<-- block: {line!r}"
            indent, paths = block["indent"], [p.strip() for p in lines[i + 1 : end] if p.strip()]
            i = end
        else:
            out.append(line)
            i += 1
            continue
        for name in paths:
            path = ROOT / name
            assert path.is_file(), f"included file {name} does not exist"
            files.append(path)
            out += [indent + text for text in path.read_text().splitlines()]
        i += 1
    return out, files


def code_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous.strip())
        end = i + 1
        while end < len(lines) and not lines[end].startswith(opening["fence"]):
            end += 1
        raw = lines[i + 1 : end]
        expanded, files = expand(raw)
        whole_file = len(files) == 1 and expanded == files[0].read_text().splitlines()
        code = "\n".join(expanded) + "\n"
        lang = opening["lang"].lower()
        blocks.append(
            Block(page, i + 2, lang, code, marker["what"] if marker else None, files[0] if whole_file else None)
        )
        i = end + 1
    return blocks


def python_pages() -> list[Path]:
    return [page for page in PAGES if any(b.lang in ("python", "py") for b in code_blocks(page))]


def shell_commands(block: Block) -> list[list[str]]:
    """The argument lists of the ``genkit`` commands in a bash block (comments, ``&&`` chains and pipes split)."""
    commands = []
    for line in block.code.splitlines():
        for segment in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(segment, comments=True)
            if words and words[0] == "genkit":
                commands.append(words[1:])
    return commands


def console_sessions(block: Block) -> list[tuple[list[str], str]]:
    """(arguments, shown output) for each ``$ genkit ...`` line of a console block."""
    sessions: list[tuple[list[str], list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:], comments=True)
            assert words[0] == "genkit", f"{block.where}: only genkit commands are checked, got {line!r}"
            sessions.append((words[1:], []))
        else:
            assert sessions, f"{block.where}: output before any $ command"
            sessions[-1][1].append(line)
    return [(args, "\n".join(out).rstrip() + "\n") for args, out in sessions]


def all_blocks(*langs: str) -> list[Block]:
    return [b for page in PAGES for b in code_blocks(page) if b.lang in langs]


def parse(args: list[str]) -> None:
    """Parse ``genkit ARGS`` with the real click commands without running them; a usage error fails."""
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in CHEAP or "--help" in args or "-h" in args:
        return
    name, *rest = args
    assert name in cli.commands, f"genkit has no command {name!r} (commands: {', '.join(sorted(cli.commands))})"
    cli.commands[name].make_context(f"genkit {name}", list(rest))


# -- the pages themselves -----------------------------------------------------------------------------------------


def test_the_site_has_its_pages():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {
        "index.md",
        "getting-started.md",
        "concepts.md",
        "writing-a-plugin.md",
        "benchmarks.md",
        "cli.md",
        "api/genkit.md",
    } <= names
    assert {p.name for p in python_pages()} >= {"getting-started.md", "concepts.md", "writing-a-plugin.md"}


@pytest.mark.parametrize("page", python_pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_python_examples_run(page, tmp_path, monkeypatch):
    """Each page's Python blocks, in order, in one fresh module, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    module = types.ModuleType(f"genkit_docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registries = registry.KINDS.values()
    for reg in registries:  # the example plugin's folder may hold packaging metadata: find plugins afresh
        reg.refresh()
    known = {reg.group: set(reg.names()) for reg in registries}
    modules = set(sys.modules)
    torch.manual_seed(0)
    try:
        for block in code_blocks(page):
            if block.lang not in ("python", "py"):
                continue
            if block.include is not None:  # a whole file: tracebacks point into that file
                filename, source = str(block.include), block.code
            else:  # pad so that tracebacks give the page's own line numbers
                filename, source = str(page), "\n" * (block.line - 1) + block.code
            exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)
    finally:
        for reg in registries:
            for name in set(reg.names()) - known[reg.group]:
                reg.unregister(name)
            reg.refresh()
        for name in set(sys.modules) - modules:
            if name.startswith("genkit_mlp_vae"):
                del sys.modules[name]


def test_snippets_and_pictures_exist():
    for page in PAGES:
        text = page.read_text()
        expand(text.splitlines())  # asserts that every included file exists
        for match in IMAGE.finditer(text):
            assert (page.parent / match["path"]).is_file(), f"{page.name}: picture {match['path']} is missing"


def test_plugin_page_includes_the_real_example_files():
    included = {path for block in code_blocks(DOCS / "writing-a-plugin.md") if (path := block.include) is not None}
    assert included == {package / name for package, names in PLUGIN_PAGE_FILES.items() for name in names}
    modules = {p for p in (EXAMPLE_PARTS / "genkit_example_parts").glob("*.py") if p.name != "__init__.py"}
    assert modules <= included, "every module of the parts package is shown on the plugin page"


def test_quick_start_commands_are_the_readmes():
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in code_blocks(DOCS / "getting-started.md") if b.lang == "bash"][:2]
    assert [b.code.strip().endswith(("genkit run vae-conv --latent 10", "pytest")) for b in blocks] == [True, True]
    for block in blocks:
        assert block.code.strip() in readme, f"{block.where} differs from the README's quick start"


# -- shell examples -------------------------------------------------------------------------------------------------


SHELL = [(b, args) for b in all_blocks("bash", "sh", "shell") for args in shell_commands(b)]


def test_docs_show_genkit_commands():
    assert len(SHELL) >= 15
    assert {args[0] for _, args in SHELL if args} >= {"run", "list", "info", "sample", "encode", "decode", "denoise"}


@pytest.mark.parametrize(("block", "args"), SHELL, ids=[f"{b.where} genkit {' '.join(a)}" for b, a in SHELL])
def test_shell_example_parses(block, args):
    parse(args)


@pytest.mark.parametrize(
    ("block", "args"),
    [(b, a) for b, a in SHELL if a and a[0] in CHEAP],
    ids=[f"{b.where} genkit {' '.join(a)}" for b, a in SHELL if a and a[0] in CHEAP],
)
def test_cheap_shell_example_runs(block, args, capsys, tmp_path_factory):
    installs = local_installs(block)
    if not installs:
        assert main(args) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip()
        return
    # The block installs a package first (the example plugin): do that, into a folder of its own.
    key = tuple(installs)
    if key not in _INSTALLED:
        target = tmp_path_factory.mktemp("site")
        for package in installs:
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
            subprocess.run([*pip, str(target), str(ROOT / package)], check=True, capture_output=True)
        _INSTALLED[key] = target
    target = _INSTALLED[key]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "genkit", *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


_INSTALLED: dict[tuple[str, ...], Path] = {}


def local_installs(block: Block) -> list[str]:
    """The local folders a block installs with ``pip install ./FOLDER``."""
    return re.findall(r"^pip install (\./\S+)", block.code, flags=re.MULTILINE)


CONSOLE = [(b, args, out) for b in all_blocks("console") for args, out in console_sessions(b)]


@pytest.mark.parametrize(("block", "args", "shown"), CONSOLE, ids=[f"{b.where}" for b, _, _ in CONSOLE])
def test_console_example_output_is_what_genkit_prints(block, args, shown, capsys):
    assert args and args[0] in CHEAP, f"{block.where}: console blocks are for cheap commands"
    assert main(args) == 0
    printed = "\n".join(line.rstrip() for line in capsys.readouterr().out.splitlines()) + "\n"
    assert printed == shown


RUN_BLOCKS = [b for b in all_blocks("bash") if b.marker == "run"]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_run_block(block, data_dir, tmp_path, monkeypatch, capsys):
    """A block marked ``<!-- test: run -->`` runs command by command, in an empty folder, on real MNIST."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENKIT_DATA_DIR", str(data_dir))
    for args in shell_commands(block):
        code = main(args)
        assert code == 0, f"genkit {' '.join(args)} exited {code}: {capsys.readouterr().err}"
    assert any(tmp_path.rglob("metrics.json")), "the block trained nothing"


def test_docs_have_a_run_block():
    assert RUN_BLOCKS, "getting-started.md should keep its tested quick run"


# -- the pictures and their script ----------------------------------------------------------------------------------


def _docs_script(name: str) -> types.ModuleType:
    """A Python file of docs/ (not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"genkit_docs_{name}", DOCS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_pictures() -> types.ModuleType:
    return _docs_script("make_pictures")


def test_committed_pictures_come_from_the_documented_command():
    make_pictures = _make_pictures()
    for name in make_pictures.PICTURES:
        assert (DOCS / "images" / f"{name}.png").is_file(), name
    summary = (DOCS / "images" / "run-summary.md").read_text()
    assert summary.startswith("they were made by `genkit " + " ".join(make_pictures.COMMAND) + "`")


def test_make_pictures_rebuilds_the_command_line(tmp_path):
    make_pictures = _make_pictures()
    config = {
        "model": "vae-conv",
        "model_config": {"latent": 10, "image_size": 28, "image_channels": 1, "channels": 8, "hidden": 256},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.001, "seed": 0, "device": "auto", "noise": "gaussian:0.5"},
        "data": {"dataset": "mnist", "limit": 200},
    }
    command = make_pictures.command_of(config)
    expected = "genkit run vae-conv --latent 10 --set encoder.channels=8 --set decoder.channels=8 --epochs 1"
    # a format-1 config.json (genkit 0.1), which trained at the constant lr 0.001 of its day
    assert command == expected + " --lr 0.001 --lr-schedule constant --lr-warmup 0 --noise gaussian:0.5 --limit 200"
    parse(shlex.split(command)[1:])
    import genkit
    from genkit.checkpoint import run_config
    from genkit.train import TrainConfig

    model = genkit.get_model("vae-conv", latent=4, prior="mog", **{"loss.k": 3}, loss="iwae", **{"prior.components": 3})
    train = TrainConfig(epochs=2).to_dict()  # a run records every training setting
    config = {**run_config(model), "train": train, "data": {"dataset": "mnist", "noise": None}}
    command = make_pictures.command_of(config)
    assert (
        command
        == "genkit run vae-conv --latent 4 --prior mog --set prior.components=3 --loss iwae --set loss.k=3 --epochs 2"
    )
    parse(shlex.split(command)[1:])


@pytest.mark.slow
def test_make_pictures_from_a_real_run(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENKIT_DATA_DIR", str(data_dir))
    args = ["run", "vae-conv", "--latent", "10", "--epochs", "1", "--limit", "300", "--out", "run", "--quiet"]
    assert main(args) == 0
    make_pictures = _make_pictures()
    make_pictures.main(["--from", "run", "--images", "images"])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        [f"{name}.png" for name in make_pictures.PICTURES] + ["run-summary.md"]
    )
    summary = (tmp_path / "images" / "run-summary.md").read_text()
    assert "`genkit run vae-conv --latent 10 --epochs 1 --limit 300`: 1 epoch on 300 training images" in summary
    assert "Test-set reconstruction MSE 0." in summary


# -- the mkdocs hooks ------------------------------------------------------------------------------------------------


def _hooks() -> types.ModuleType:
    return _docs_script("hooks")


def test_hook_includes_benchmark_tables_as_written(tmp_path):
    hooks = _hooks()
    assert "No benchmark results have been committed yet" in hooks.benchmark_results(tmp_path)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "mnist-cpu-quick.md").write_text("# mnist on cpu\n\n| model | test MSE |\n|---|---|\n| ae | 0.0123 |\n")
    text = hooks.benchmark_results(tmp_path)
    assert text.startswith("### mnist on cpu\n")
    assert "| ae | 0.0123 |" in text and "benchmarks/results/mnist-cpu-quick.md" in text


def test_hook_protocol_table_lists_every_protocol():
    from benchmarks.suite import PROTOCOLS

    table = _hooks().benchmark_protocols(ROOT)
    for name, protocol in PROTOCOLS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {protocol.epochs} |" in row and all(f"`{e.label}`" in row for e in protocol.entries)
        assert f"| {protocol.lr:g} {protocol.lr_schedule}" in row
    assert "| 0.002 cosine, warm-up 1 epoch |" in table
    assert "| all (binarised) | 1000 | 1000 | — | 1000 |" in table  # the nll protocol: no ex-post prior
    assert "| gmm (10), diffusion | 100 |" in table


def test_hook_shows_sphinx_roles_as_code():
    hooks = _hooks()
    html_in = "see :class:<code>~genkit.train.Trainer</code> and :func:<code>genkit.get_model</code>."
    assert hooks.on_page_content(html_in, None, None, None) == (
        "see <code>Trainer</code> and <code>genkit.get_model</code>."
    )


# -- the site -------------------------------------------------------------------------------------------------------


def _text(page: Path) -> str:
    """A built page's text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click", "pymdownx"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed: pip install -c constraints.txt -e '.[docs]' (or nox -s docs)")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


@pytest.mark.slow
def test_site_builds_strict_with_every_page(site):
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.as_posix() == "index" else rel / "index.html")
        assert built.is_file(), f"{page.name} was not built"
    for picture in (DOCS / "images").glob("*.png"):
        assert (site / "images" / picture.name).is_file()


@pytest.mark.slow
def test_site_cli_reference_covers_every_command(site):
    text = _text(site / "cli" / "index.html")
    for name, command in cli.commands.items():
        assert f"genkit {name}" in text
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert opt in text, f"genkit {name} {opt} is not in the CLI reference"


@pytest.mark.slow
def test_site_api_reference_covers_the_public_names(site):
    import genkit

    page = (site / "api" / "genkit" / "index.html").read_text()
    for name in genkit.__all__:
        assert f'id="genkit.{name}"' in page, f"genkit.{name} is not in the API reference"
    runs = (site / "api" / "runs" / "index.html").read_text()
    for name in ("load_model", "save_run", "start_run", "resume_run"):
        assert f'id="genkit.{"checkpoint" if name in ("load_model", "save_run") else "run"}.{name}"' in runs
    assert ":class:" not in _text(site / "api" / "genkit" / "index.html")


@pytest.mark.slow
def test_site_plugin_page_shows_the_real_files(site):
    text = _text(site / "writing-a-plugin" / "index.html")
    for package, names in PLUGIN_PAGE_FILES.items():
        for name in names:
            for line in (package / name).read_text().splitlines():
                assert line.strip() in text, f"{package.name}/{name}: {line!r} is not on the page"


@pytest.mark.slow
def test_site_benchmark_page_shows_the_committed_results(site):
    text = _text(site / "benchmarks" / "index.html")
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    if not results:
        assert "No benchmark results have been committed yet" in text
    for path in results:
        rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
        for row in rows[1:]:
            cell = row.split("|")[1].strip().strip("`*")  # `code` and **bold** show without their marks
            assert cell in text, f"{path.name}: row {row[:40]!r} is not on the page"
        assert f"benchmarks/results/{path.name}" in text


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in code_blocks(ROOT / "README.md") if b.lang == "python"]
    assert blocks, "the README should keep its library example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.code, str(ROOT / "README.md"), "exec"), namespace)
    assert namespace["samples"].shape == (16, 1, 28, 28)
