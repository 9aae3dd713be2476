"""Rate–distortion benchmark: real bytes per image and PSNR of genkit's compression against the codecs people use.

    python -m benchmarks.rd --dataset mnist --images 2000 --epochs 10

Codecs (through Pillow, every image saved to its own file, headers included): PNG and WebP lossless, WebP, JPEG
and AVIF at several qualities; gzip and bz2 of the raw 8-bit set. genkit: models trained once by ``genkit run``
(kept in ``benchmarks/runs/``, reused when finished), each image set compressed into one file by the same code
as ``genkit compress``, at several quantisation steps (a learned compressor at several lambdas), and losslessly by
bits-back coding (``genkit compress --lossless``) with VAEs trained with the logistic likelihood. PSNR is that of
the mean squared error over the set.
Results: ``benchmarks/results/rd-<dataset>-<device>.json``, a markdown table with the comparison at matched PSNR,
and a bytes-versus-PSNR plot in ``docs/images/``. With ``--models`` only those entries are (trained and) coded;
the other entries' points are kept from the previous results of the same dataset, image count and epochs, and the
table lists every command that made it.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import itertools
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_io import RESULTS, provenance, read_record, write_results
from genkit import bitsback
from genkit import compress as gkc
from genkit.checkpoint import WEIGHTS_FILE, load_model
from genkit.data import load_dataset
from genkit.metrics import psnr
from genkit.train import select_device

RUNS = Path(__file__).parent / "runs"
DOCS_IMAGES = Path(__file__).parents[1] / "docs" / "images"
#: Pillow format -> settings, each a (label, save options) pair
CODECS = {
    "PNG": [("lossless", {"optimize": True})],
    "WEBP": [("lossless", {"lossless": True, "quality": 100, "method": 6})]
    + [(f"q{q}", {"quality": q, "method": 6}) for q in (0, 10, 25, 50, 75, 90)],
    "JPEG": [(f"q{q}", {"quality": q}) for q in (5, 10, 25, 50, 75, 90)],
    "AVIF": [(f"q{q}", {"quality": q}) for q in (0, 10, 25, 50, 75, 90)],
}


@dataclass(frozen=True)
class Entry:
    """A genkit model in the benchmark: trained once by ``genkit run ARGS``, then coded at each step."""

    name: str  #: run folder name
    curve: str  #: the curve its points belong to
    args: tuple[str, ...]  #: genkit run arguments
    steps: tuple[float | None, ...] = (None,)  #: quantisation steps; None: the codes as they are (vq, compressor)
    lossless: bool = False  #: bits-back coding of the exact pixels instead


def lossless_vae(name: str, sigma: float, latent: int = 16, scale: str = "fixed") -> Entry:
    """A VAE with a probability for every grey level (the logistic likelihood of scale ``sigma``, or with
    ``scale="decoded"`` sigma times a scale the decoder predicts per pixel), for bits-back."""
    args = ("vae-conv", "--latent", str(latent), "--set", "loss.likelihood=logistic", "--set", f"loss.sigma={sigma:g}")
    if scale != "fixed":
        args += ("--set", f"loss.scale={scale}")
    return Entry(name, "lossless", args, lossless=True)


FCN = ("--encoder", "fcn", "--decoder", "fcn", "--latent", "392")
FCN_LMBDAS = (0.016, 0.048, 0.128)
MODELS = [
    Entry("ae-latent8", "ae-latent8", ("ae", "--latent", "8"), (0.25, 0.5, 1.0, 2.0)),
    Entry("ae-latent16", "ae-latent16", ("ae", "--latent", "16"), (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)),
    Entry("ae-latent32", "ae-latent32", ("ae", "--latent", "32"), (0.1, 0.25, 0.5, 1.0, 2.0)),
    Entry("vq-vae", "vq-vae", ("vq-vae", "--latent", "16")),
    # the learned compressor, trained for rate + lmbda * distortion: one run per point of its curve
    *(
        Entry(f"compressor-lmbda{lmbda:g}", "compressor", ("compressor", "--set", f"loss.lmbda={lmbda:g}"))
        for lmbda in (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)
    ),
    # the compressor with local codes (a 7x7 grid of 8 channels on 28-pixel images): the high-quality end
    *(
        Entry(
            f"compressor-fcn-lmbda{lmbda:g}", "compressor-fcn", ("compressor", *FCN, "--set", f"loss.lmbda={lmbda:g}")
        )
        for lmbda in FCN_LMBDAS
    ),
    *(lossless_vae(f"vae-logistic{sigma:g}", sigma) for sigma in (0.04, 0.06, 0.09, 0.12)),
    lossless_vae("vae-logistic0.09-latent32", 0.09, latent=32),
    lossless_vae("vae-logistic0.09-latent64", 0.09, latent=64),
    # the decoder also predicts each pixel's scale (sure of the background, unsure at the strokes' edges)
    lossless_vae("vae-logistic-decoded-latent16", 0.09, latent=16, scale="decoded"),
    lossless_vae("vae-logistic-decoded-latent32", 0.09, latent=32, scale="decoded"),
]


@dataclass
class Point:
    """One rate–distortion point."""

    method: str  #: e.g. "WEBP q10", "genkit ae-latent16 step 0.5"
    family: str  #: the curve it belongs to (PNG, WEBP, JPEG, AVIF, raw, genkit:<model>)
    bytes_per_image: float
    psnr: float | None  #: dB; None when lossless
    entry: str | None = None  #: the genkit entry that made it; None for the codecs

    @property
    def lossless(self) -> bool:
        return self.psnr is None


def codec_points(images: torch.Tensor) -> list[Point]:
    from PIL import Image

    pixels = (images * 255).round().to(torch.uint8).numpy()  # (N, C, H, W): the dataset's own 8-bit values
    mode = "L" if pixels.shape[1] == 1 else "RGB"
    points = []
    for fmt, settings in CODECS.items():
        for label, options in settings:
            total, decoded = 0, []
            for image in pixels:
                picture = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode)
                buffer = io.BytesIO()
                picture.save(buffer, format=fmt, **options)
                total += buffer.tell()
                back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode), dtype=np.uint8)
                decoded.append(back[None] if mode == "L" else back.transpose(2, 0, 1))
            restored = torch.from_numpy(np.stack(decoded)).float() / 255
            quality = None if torch.equal(restored, images) else psnr(restored, images)
            points.append(Point(f"{fmt} {label}", fmt, total / len(images), quality))
    raw = pixels.tobytes()
    for name, packed in (("gzip -9", gzip.compress(raw, 9)), ("bz2 -9", bz2.compress(raw, 9))):
        points.append(Point(f"{name} of the raw set", "raw", len(packed) / len(images), None))
    return points


def train_run(name: str, args: list[str], dataset: str, epochs: int, device: str) -> Path:
    """The run folder of ``genkit run ARGS``, trained once (a finished run is reused)."""
    run = RUNS / f"{dataset}-{name}-{epochs}ep"
    metrics = run / "metrics.json"  # written after every epoch; "test" only once the run has finished
    if not metrics.is_file() or "test" not in json.loads(metrics.read_text()):
        command = [sys.executable, "-m", "genkit", "run", *args, "--dataset", dataset, "--epochs", str(epochs)]
        command += ["--device", device, "--out", str(run), "--overwrite", "--quiet"]
        print("$ " + " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True)
    return run


def genkit_points(run: Path, entry: Entry, images: torch.Tensor) -> list[Point]:
    model = load_model(run).eval()
    weights = gkc.sha256(run / WEIGHTS_FILE)
    if entry.lossless:
        data = bitsback.compress(model, images, weights)
        header, words = gkc.read_header(data, entry.name)
        back = torch.cat(list(bitsback.decompress(model, header, words, entry.name)))
        assert torch.equal(bitsback.levels_of(back), bitsback.levels_of(images)), "bits-back did not round-trip"
        size = len(data) / len(images)
        return [Point(f"genkit {entry.name} bits-back", f"genkit:{entry.curve}", size, None, entry.name)]
    points = []
    for step in entry.steps:
        code_model, path = gkc.run_code_model(run, model, step or 0.5)
        data, decoded = gkc.compress(model, images, code_model, weights, gkc.sha256(path), step)
        label = f"genkit {entry.name}" + (f" step {step:g}" if step else "")
        size, quality = len(data) / len(images), psnr(decoded, images)
        points.append(Point(label, f"genkit:{entry.curve}", size, quality, entry.name))
    return points


def bytes_at(points: list[Point], family: str, quality: float) -> float | None:
    """Bytes per image of ``family``'s curve at PSNR ``quality`` (log-linear between its points), if inside it."""
    curve = sorted((p.psnr, p.bytes_per_image) for p in points if p.family == family and not p.lossless)
    for (q0, b0), (q1, b1) in itertools.pairwise(curve):
        if q0 <= quality <= q1 and q1 > q0:
            t = (quality - q0) / (q1 - q0)
            return math.exp((1 - t) * math.log(b0) + t * math.log(b1))
    return None


def best_genkit_beating(points: list[Point], target: Point) -> Point | None:
    """genkit's smallest point at least as good as ``target`` (a lossless point beats every lossy one) and smaller."""
    rivals = [
        p
        for p in points
        if p.family.startswith("genkit")
        and p.bytes_per_image < target.bytes_per_image
        and (p.lossless or (not target.lossless and p.psnr >= target.psnr))
    ]
    return min(rivals, key=lambda p: p.bytes_per_image, default=None)


def markdown(record: dict) -> str:
    points = [Point(**p) for p in record["points"]]
    pixels = record.get("pixels", 784)
    commands = "; then ".join(f"`{c}`" for c in record["commands"])
    lines = [
        f"# Rate–distortion on {record['dataset']}: first {record['images']} test images, {record['device_name']}",
        "",
        f"Made by {commands}. Bytes are whole files (headers included) per image; PSNR of the mean "
        "squared error over the set; genkit models trained by the `genkit run` commands below.",
        "",
        "| method | bytes/image | PSNR dB | WebP at that PSNR | JPEG at that PSNR |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        cells = []
        for family in ("WEBP", "JPEG"):
            other = bytes_at(points, family, p.psnr) if p.family.startswith("genkit") and not p.lossless else None
            cells.append(f"{other:.0f} B ({other / p.bytes_per_image:.1f}x)" if other else "—")
        quality = f"lossless, {8 * p.bytes_per_image / pixels:.2f} bits/pixel" if p.lossless else f"{p.psnr:.2f}"
        lines.append(f"| {p.method} | {p.bytes_per_image:.1f} | {quality} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "Each WebP point against genkit's smallest file that is as good (a lossless file beats every lossy one):",
        "",
    ]
    for p in points:
        if p.family == "WEBP":
            rival = best_genkit_beating(points, p)
            quality = "lossless" if p.lossless else f"{p.psnr:.2f} dB"
            won = f"{rival.method}, {rival.bytes_per_image:.1f} B" if rival else "none: WebP wins"
            lines.append(f"- WEBP {p.method.split()[-1]} ({p.bytes_per_image:.1f} B, {quality}): {won}")
    lines += ["", "genkit models:", ""] + [f"- `genkit {' '.join(c)}`" for c in record["runs"].values()]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    from genkit.report import _pyplot, _save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    points = [Point(**p) for p in record["points"]]
    for family in dict.fromkeys(p.family for p in points):
        curve = sorted((p.bytes_per_image, p.psnr) for p in points if p.family == family and not p.lossless)
        if curve:
            style = "o-" if family.startswith("genkit") else "s--"
            ax.plot(*zip(*curve, strict=True), style, label=family, markersize=4)
    # lossless files have no PSNR: a vertical line at their size (genkit's smallest, and each codec's)
    lossless = [p for p in points if p.lossless and not p.family.startswith("genkit")]
    lossless += sorted(
        (p for p in points if p.lossless and p.family.startswith("genkit")), key=lambda p: p.bytes_per_image
    )[:1]
    for p, style in zip(lossless, itertools.cycle([":", "-.", "--", (0, (1, 3))]), strict=False):
        ours = p.family.startswith("genkit")
        label = p.method if "lossless" in p.method else f"{p.method} (lossless)"
        ax.axvline(p.bytes_per_image, color="black" if ours else "grey", linestyle="-" if ours else style,
                   linewidth=1.5 if ours else 1, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (whole files)")
    ax.set_ylabel("PSNR dB")
    ax.set_title(f"{record['dataset']}: first {record['images']} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def previous_entries(path: Path, args: argparse.Namespace, replaced: set[str]) -> dict | None:
    """The commands, runs and points of the genkit entries in the results at ``path`` other than ``replaced``, when
    they were made on the same dataset, images and epochs (results of earlier versions, which did not name the
    entry of each point, are read too)."""
    record = read_record(path)
    if record is None:
        return None
    runs = record["runs"]
    if isinstance(runs, list):  # earlier versions: a list of commands, one per entry, in MODELS order
        names = {tuple(e.args): e.name for e in MODELS}
        runs = {names[tuple(r[1:-4])]: r for r in runs if tuple(r[1:-4]) in names}
    epochs = record.get("epochs") or next((int(r[-1]) for r in runs.values()), None)
    if (record["dataset"], record["images"], epochs) != (args.dataset, args.images, args.epochs):
        print(f"not merging with {path}: it holds other images or epochs", flush=True)
        return None
    points = []
    for p in record["points"]:
        if "entry" not in p and p["family"].startswith("genkit"):  # "genkit NAME", then " step S" or " bits-back"
            p["entry"] = next(
                (n for n in sorted(runs, key=len, reverse=True) if p["method"].startswith(f"genkit {n}")), None
            )
        point = Point(**p)
        if point.entry in runs and point.entry not in replaced:
            points.append(point)
    kept = {n: r for n, r in runs.items() if n not in replaced}
    if not kept:  # every entry is made again: the earlier commands made none of the table
        return None
    return {"commands": record.get("commands") or [record["command"]], "runs": kept, "points": points}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--images", type=int, default=2000, help="first N test images")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of genkit's models")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--models", help="only these genkit entries, comma-separated (default: all)")
    args = parser.parse_args(argv)
    entries = MODELS
    if args.models:
        wanted = args.models.split(",")
        entries = [e for e in MODELS if e.name in wanted]
        unknown = set(wanted) - {e.name for e in entries}
        if unknown:
            names = ", ".join(e.name for e in MODELS)
            parser.error(f"unknown --models {', '.join(sorted(unknown))}: choose from {names}")
    device = select_device(args.device)
    out = args.results / f"rd-{args.dataset}-{device.type}.json"
    command = "python -m benchmarks.rd " + " ".join(argv if argv is not None else sys.argv[1:])
    kept = previous_entries(out, args, {e.name for e in entries}) if args.models else None
    _, test = load_dataset(args.dataset)
    images = test.images[: args.images]
    points = codec_points(images)
    runs = {}
    for entry in entries:
        run = train_run(entry.name, list(entry.args), args.dataset, args.epochs, str(device))
        runs[entry.name] = ["run", *entry.args, "--dataset", args.dataset, "--epochs", str(args.epochs)]
        points += genkit_points(run, entry, images)
    commands = [command]
    if kept:  # the entries run now replace their old points; the table keeps the order of MODELS
        commands = kept["commands"] + commands
        order = {e.name: i for i, e in enumerate(MODELS)}
        runs = dict(sorted({**kept["runs"], **runs}.items(), key=lambda item: order[item[0]]))
        ours = sorted([p for p in points if p.entry] + kept["points"], key=lambda p: order[p.entry])
        points = [p for p in points if p.entry is None] + ours
    record = {
        "dataset": args.dataset,
        "images": len(images),
        "epochs": args.epochs,
        "pixels": images[0, 0].numel(),
        **provenance(device),
        "commands": commands,
        "runs": runs,
        "points": [asdict(p) for p in points],
    }
    write_results(out, record, markdown(record))
    plot(record, DOCS_IMAGES / f"rd-{args.dataset}-{device.type}.png")  # the compression page shows it
    return record


if __name__ == "__main__":
    main()
