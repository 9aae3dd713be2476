"""Sweeps and comparisons: ``genkit sweep`` trains one run per point of an option grid (resumably), and
``genkit compare`` tabulates and plots finished runs against the options that differ between them."""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from genkit.checkpoint import write_json
from genkit.config import TrainConfig, parse_value
from genkit.errors import ConfigError, DataError
from genkit.evaluate import EVAL_FILE
from genkit.files import atomic_write

SWEEP_FILE = "sweep.json"
#: grid keys given to ``genkit run`` as their own flag; any other key is a model or part option (``--set``)
FLAGS = {f.name for f in fields(TrainConfig)} | {"dataset", "noise", "limit", "encoder", "decoder", "prior", "loss"}
_KEY = re.compile(r"[A-Za-z_][\w.-]*")

Log = Callable[[str], None]


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``["latent=2,4", "beta=1,4"]`` as ``{"latent": [2, 4], "beta": [1, 4]}`` (values read as JSON, else text)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not _KEY.fullmatch(key) or not values:
            raise ConfigError(f"--grid {item!r}: give KEY=V1,V2,... (e.g. latent=2,4,8)")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice: give all its values once, comma-separated")
        grid[key] = [parse_value(v) for v in values.split(",")]
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    return grid


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order (the first key varies slowest)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a point, e.g. ``latent=8_beta=4``."""
    return "_".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '-', str(v))}" for k, v in point.items())


def point_args(point: dict[str, Any]) -> list[str]:
    """``genkit run`` arguments that set a point's values."""
    args: list[str] = []
    for key, value in point.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += [f"--{key.replace('_', '-')}", text] if key in FLAGS else ["--set", f"{key}={text}"]
    return args


def _finished(run: Path) -> bool:
    try:
        return "test" in json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def run_sweep(
    model: str, grid: dict[str, list[Any]], run_args: list[str], out: Path, jobs: int = 1, log: Log = print
) -> list[Path]:
    """Train one run per grid point into ``out/POINT`` with ``genkit run`` (``jobs`` at a time).

    Run again with the same arguments, a sweep redoes nothing finished: a finished point is skipped, one
    killed mid-way is resumed from its checkpoint. ``out`` holding a different sweep is refused.
    """
    manifest = {"model": model, "grid": grid, "run_args": run_args}
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / SWEEP_FILE
    if recorded.exists():
        try:
            earlier = json.loads(recorded.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != manifest:
            raise ConfigError(f"{out} holds another sweep ({recorded} differs): choose another --out")
    else:
        write_json(recorded, manifest)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    todo = points(grid)
    counter = itertools.count(1)

    def one(point: dict[str, Any]) -> tuple[str, int]:
        name = point_name(point)
        run = out / name
        if _finished(run):
            log(f"[{next(counter)}/{len(todo)}] {name}: finished earlier, skipped")
            return name, 0
        if (run / "checkpoint.pt").exists():
            args = ["run", "--resume", str(run), "--quiet"]
        else:
            args = ["run", model, *run_args, *point_args(point), "--out", str(run), "--overwrite", "--quiet"]
        with open(logs / f"{name}.log", "w") as output:
            code = subprocess.run(
                [sys.executable, "-m", "genkit", *args], stdout=output, stderr=subprocess.STDOUT, check=False
            ).returncode
        last = (logs / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
        log(f"[{next(counter)}/{len(todo)}] {name}: {'done' if code == 0 else 'FAILED'} ({last[0]})")
        return name, code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, todo))
    failed = [name for name, code in results if code]
    if failed:
        raise DataError(
            f"{len(failed)} of {len(todo)} runs failed ({', '.join(failed)}); see {logs}, then run the sweep "
            "again to retry them"
        )
    return [out / point_name(p) for p in todo]


# -- comparing runs --------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What ``compare`` shows of one run."""

    path: Path
    settings: dict[str, Any]  #: flat config: model, model_config.*, parts.*, train.*, data.*
    metrics: dict[str, Any] = field(default_factory=dict)  #: test metrics, empty for an unfinished run
    seconds: float | None = None
    fid: dict[str, Any] | None = None  #: {"value", "samples", "prior"} from eval.json
    nll: dict[str, Any] | None = None  #: {"nats", "samples", ...} from eval.json (genkit eval --nll)
    name: str = ""  #: how tables and pictures name the run (its folder, with the parent's when two share one)


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders among ``paths``: each a run folder, or a folder (a sweep) whose sub-folders are runs."""
    runs: list[Path] = []
    for given in map(Path, paths):
        if (given / "config.json").is_file():
            runs.append(given)
        elif given.is_dir():
            inside = sorted(p for p in given.iterdir() if (p / "config.json").is_file())
            if not inside:
                raise DataError(f"{given} is neither a run folder nor a folder of runs")
            runs += inside
        else:
            raise DataError(f"{given} does not exist")
    return runs


def summarise(run: Path) -> RunSummary:
    from genkit.checkpoint import flat_settings, read_json

    settings = flat_settings(read_json(run / "config.json"))
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    try:
        evaluated = json.loads((run / EVAL_FILE).read_text())
    except (OSError, ValueError):
        evaluated = {}
    evaluated = evaluated if isinstance(evaluated, dict) else {}
    nll = evaluated.get("nll")
    test = metrics.get("test") if isinstance(metrics, dict) else None
    seconds = metrics.get("train_seconds") if isinstance(metrics, dict) else None
    return RunSummary(run, settings, test if isinstance(test, dict) else {}, seconds, evaluated.get("fid"),
                      nll if isinstance(nll, dict) and "nats" in nll else None)  # fmt: skip


#: settings that differ between runs without being an experiment's choice
_NOT_CHOICES = ("train.progress", "train.device", "data.data_dir")


def _is_part_choice(key: str) -> bool:
    return key == "model" or (key.startswith("parts.") and key.endswith(".name"))


def varying(summaries: list[RunSummary]) -> list[str]:
    """The settings whose values differ between the runs (what was swept), in a stable order.

    When the model or a part differs, options that only follow from that choice (a preset's default head or
    channels) are left out: they differ only because the models differ.
    """

    def value(s: RunSummary, key: str) -> str:
        return json.dumps(s.settings.get(key), sort_keys=True)

    keys = dict.fromkeys(k for s in summaries for k in s.settings)
    differing = [k for k in keys if k not in _NOT_CHOICES and len({value(s, k) for s in summaries}) > 1]
    choices = [k for k in differing if _is_part_choice(k)]
    if not choices:
        return differing
    chosen = {id(s): tuple(value(s, k) for k in choices) for s in summaries}

    def implied(key: str) -> bool:  # the same model and parts always come with the same value
        seen: dict[tuple[str, ...], str] = {}
        return all(seen.setdefault(chosen[id(s)], value(s, key)) == value(s, key) for s in summaries)

    return [k for k in differing if k in choices or not implied(k)]


def add_fid(summary: RunSummary, samples: int, log: Log = print) -> None:
    """FID of ``samples`` draws from the run's own prior against as many test images, saved in ``RUN/eval.json``
    (and reused by later comparisons with the same number of samples)."""
    from genkit.checkpoint import load_model
    from genkit.data import load_dataset
    from genkit.evaluate import sample_fid, update_eval_file

    if summary.fid and summary.fid.get("samples") == samples:
        return
    model = load_model(summary.path).eval()
    dataset = summary.settings.get("data.dataset") or "mnist"
    _, test = load_dataset(dataset, summary.settings.get("data.data_dir"), model.config.image_size,
                           model.config.image_channels)  # fmt: skip
    log(f"{summary.name}:")
    summary.fid = sample_fid(model, test.images, samples, dataset, log)
    update_eval_file(summary.path, {"fid": summary.fid})


def _order(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, before everything else in text order."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value) if numeric else (1, str(value))


def table(summaries: list[RunSummary], keys: list[str]) -> str:
    """A markdown table: one row per run with its swept settings and its metrics ("unfinished" if none)."""
    short = [k.split(".")[-1] if k.split(".")[-1] not in {"name"} else k for k in keys]
    noises = {s.metrics.get("noise") for s in summaries if s.metrics}
    psnr = f"PSNR dB, {noises.pop()} → output" if len(noises) == 1 else "denoising PSNR dB"
    head = ["run", *short, "test MSE", psnr, "FID", "NLL nats", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        values = [str(s.settings.get(k)) for k in keys]
        if not s.metrics:
            cells = ["unfinished", "—", "—", "—", "—"]
        else:
            fid = f"{s.fid['value']:.1f} (n={s.fid['samples']})" if s.fid else "—"
            cells = [
                f"{s.metrics['mse']:.4f}" if "mse" in s.metrics else "—",
                f"{s.metrics['psnr_denoised']:.1f}" if "psnr_denoised" in s.metrics else "—",
                fid,
                f"{s.nll['nats']:.2f} (K={s.nll['samples']})" if s.nll else "—",
                f"{s.seconds:.{0 if s.seconds >= 10 else 1}f}" if isinstance(s.seconds, (int, float)) else "—",
            ]
        lines.append("| " + " | ".join([s.name, *values, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_metrics(summaries: list[RunSummary], keys: list[str], out: Path) -> list[Path]:
    """For each swept setting, each metric against it (a line per combination of the other swept settings)."""
    from genkit.report import _pyplot, _save_figure

    finished = [s for s in summaries if s.metrics]
    metrics = [
        ("test MSE", lambda s: s.metrics.get("mse")),
        ("PSNR dB (denoised)", lambda s: s.metrics.get("psnr_denoised")),
    ]
    if any(s.fid for s in finished):
        metrics.append(("FID", lambda s: s.fid["value"] if s.fid else None))
    if any(s.nll for s in finished):
        metrics.append(("test NLL nats", lambda s: s.nll["nats"] if s.nll else None))
    plt = _pyplot()
    written = []
    for key in keys:
        others = [k for k in keys if k != key]
        if "model" in others:  # parts that differ with the model would only repeat its name in the legend
            others = [k for k in others if not k.startswith("parts.")]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), dpi=110, squeeze=False)
        groups: dict[str, list[RunSummary]] = {}
        for s in finished:
            label = ", ".join(f"{k.split('.')[-1]}={s.settings.get(k)}" for k in others) or "runs"
            groups.setdefault(label, []).append(s)
        numeric = all(isinstance(s.settings.get(key), (int, float)) for s in finished)
        categories = sorted({str(s.settings.get(key)) for s in finished})
        for ax, (title, metric) in zip(axes[0], metrics, strict=True):
            for label, group in groups.items():
                group = sorted(group, key=lambda s: s.settings.get(key) if numeric else str(s.settings.get(key)))
                xs = [s.settings.get(key) if numeric else categories.index(str(s.settings.get(key))) for s in group]
                ys = [metric(s) for s in group]
                ax.plot(xs, [math.nan if y is None else y for y in ys], "-o", ms=4, label=label)
            if numeric and all(v > 0 for v in (s.settings.get(key) for s in finished)) and len(categories) > 2:
                ax.set_xscale("log", base=2)
            if not numeric:
                ax.set_xticks(range(len(categories)), categories)
            ax.set(title=title, xlabel=key.split(".")[-1], ylabel=title)
            if len(groups) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"compare-{key.split('.')[-1]}.png"
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def sample_sheet(summaries: list[RunSummary], out: Path) -> Path | None:
    """Each run's ``samples.png`` side by side, titled with the run's name."""
    from PIL import Image

    from genkit.report import _pyplot, _save_figure

    shown = [(s, s.path / "samples.png") for s in summaries if (s.path / "samples.png").is_file()]
    if not shown:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.9), dpi=110, squeeze=False)
    for ax, (s, path) in zip(axes[0], shown, strict=True):
        with Image.open(path) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(s.name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = out / "compare-samples.png"
    _save_figure(fig, path)
    plt.close(fig)
    return path


def compare(paths: list[str], out: Path | None = None, fid_samples: int = 0, log: Log = print) -> Path:
    """Table (``compare.md``, ``compare.json``), metric plots and a sample sheet for the runs ``paths`` name;
    written to ``out`` (default: the sweep folder when one folder of runs is given, else ``compare/``)."""
    runs = find_runs(paths)
    if out is None:
        single = len(paths) == 1 and not (Path(paths[0]) / "config.json").is_file()
        out = Path(paths[0]) if single else Path("compare")
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarise(run) for run in runs]
    folders = [run.name for run in runs]
    for s in summaries:
        s.name = f"{s.path.parent.name}/{s.path.name}" if folders.count(s.path.name) > 1 else s.path.name
    if fid_samples:
        for s in summaries:
            if s.metrics:
                add_fid(s, fid_samples, log)
    keys = varying(summaries)
    summaries.sort(key=lambda s: [_order(s.settings.get(k)) for k in keys])  # latent 2, 4, ..., 64: not as text
    text = table(summaries, keys)
    atomic_write(out / "compare.md", lambda tmp: tmp.write_text(text))
    record = [
        {"run": str(s.path), "settings": {k: s.settings.get(k) for k in keys}, "test": s.metrics, "fid": s.fid,
         "train_seconds": s.seconds}
        for s in summaries
    ]  # fmt: skip
    write_json(out / "compare.json", record)
    log(text.rstrip())
    written = plot_metrics(summaries, keys, out) if keys and any(s.metrics for s in summaries) else []
    sheet = sample_sheet(summaries, out)
    names = [p.name for p in [*written, *([sheet] if sheet else [])]]
    log(f"wrote compare.md, compare.json{''.join(', ' + n for n in names)} to {out}")
    return out
