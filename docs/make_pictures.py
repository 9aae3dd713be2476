"""Make the pictures of the getting-started page from a real run of ``genkit run``.

    GENKIT_DATA_DIR=/path/to/data python docs/make_pictures.py          # runs: genkit run vae-conv --latent 10
    python docs/make_pictures.py --from runs/vae-conv-mnist              # uses a finished run instead

The run's PNGs are copied into ``docs/images/`` and ``docs/images/run-summary.md`` is written from the run's
own ``config.json`` and ``metrics.json``: the command line that made the run (rebuilt from its config), its test
MSE, PSNR and timings. The page includes that file, so no number on it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).resolve().parent / "images"
PICTURES = ("samples", "latent", "reconstructions", "denoising", "interpolation", "loss")
#: The documented command: the README's quick start.
COMMAND = ["run", "vae-conv", "--latent", "10"]
#: TrainConfig field -> genkit run option.
TRAIN_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_schedule": "--lr-schedule",
    "lr_warmup": "--lr-warmup",
    "seed": "--seed",
    "device": "--device",
}


def command_of(config: dict[str, Any]) -> str:
    """The ``genkit run`` command line that reproduces a run, rebuilt from its ``config.json``."""
    from genkit import get_model
    from genkit.checkpoint import build_model_from_config, model_parts, upgrade_config
    from genkit.train import TrainConfig

    config = upgrade_config(config)
    words = ["genkit", "run", config["model"]]
    default = get_model(config["model"], check=False)
    run = model_parts(build_model_from_config(config, Path("config.json"), check=False))
    for key, value in config["model_config"].items():
        if key not in default.config.to_dict():  # a format-1 config's part options: the parts below give them
            continue
        if value == default.config.to_dict()[key] and key != "latent":  # --latent always, as the README does
            continue
        words += [f"--{key}", str(value)] if key == "latent" else ["--set", f"{key}={json.dumps(value)}"]
    for kind, part in run.items():
        own = model_parts(default)[kind]
        if part["name"] != own["name"]:
            words += [f"--{kind}", part["name"]]
            own = {
                "options": get_model(config["model"], check=False, **{kind: part["name"]}).part(kind).config.to_dict()
            }
        for key, value in part["options"].items():
            if value != own["options"].get(key):
                words += ["--set", f"{kind}.{key}={value if isinstance(value, str) else json.dumps(value)}"]
    train_defaults = TrainConfig().to_dict()
    for key, flag in TRAIN_FLAGS.items():
        if key in config["train"] and config["train"][key] != train_defaults[key]:
            value = config["train"][key]
            words += [flag, str(value)]
    data = config.get("data") or {}
    if data.get("noise"):
        words += ["--noise", data["noise"]]
    if data.get("dataset", "mnist") != "mnist":
        words += ["--dataset", data["dataset"]]
    if data.get("limit"):
        words += ["--limit", str(data["limit"])]
    return " ".join(words)


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def summary(run_dir: Path) -> str:
    """One markdown paragraph describing the run in ``run_dir`` from its own files."""
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics.get("test") or {}
    epochs = len(metrics.get("epochs") or [])
    parts = [
        f"they were made by `{command_of(config)}`: {epochs} epoch{'s' if epochs != 1 else ''} on "
        f"{metrics['train_images']} training images of {metrics['dataset']}, on {metrics['device']} "
        f"({metrics['device_name']}), genkit {config.get('genkit_version', '?')}.",
    ]
    if test:
        parts.append(
            f"Test-set reconstruction MSE {test['mse']:.4f}; with `{test['noise']}` noise the PSNR goes from "
            f"{test['psnr_noisy']:.1f} dB (noisy input) to {test['psnr_denoised']:.1f} dB (the model's output)."
        )
    parts.append(
        f"Training took {_minutes(metrics['train_seconds'])} ({metrics['images_per_second']:.0f} images/s), "
        f"training and evaluation {_minutes(metrics['wall_seconds_this_session'])}."
    )
    return " ".join(parts) + "\n"


def copy_pictures(run_dir: Path, images: Path = IMAGES) -> list[Path]:
    """Copy the run's pictures into ``images`` and write ``run-summary.md`` beside them."""
    missing = [name for name in PICTURES if not (run_dir / f"{name}.png").is_file()]
    if missing:
        raise SystemExit(f"{run_dir} lacks {', '.join(missing)}.png: is it a finished genkit run?")
    images.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PICTURES:
        written.append(Path(shutil.copyfile(run_dir / f"{name}.png", images / f"{name}.png")))
    (images / "run-summary.md").write_text(summary(run_dir))
    written.append(images / "run-summary.md")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a finished run folder to take the pictures from")
    parser.add_argument("--images", type=Path, default=IMAGES, help="where to write [default: docs/images]")
    args = parser.parse_args(argv)
    if args.source is not None:
        run_dir = args.source
        if not (run_dir / "config.json").is_file():
            raise SystemExit(f"{run_dir} is not a genkit run folder")
        command = command_of(json.loads((run_dir / "config.json").read_text()))
        if command != "genkit " + " ".join(COMMAND):
            print(f"note: {run_dir} was made by `{command}`, not the documented `genkit {' '.join(COMMAND)}`")
        for path in copy_pictures(run_dir, args.images):
            print(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "genkit", *COMMAND, "--out", str(run_dir), "--quiet"]
        print("$ genkit " + " ".join(COMMAND), flush=True)
        subprocess.run(cmd, check=True)
        for path in copy_pictures(run_dir, args.images):
            print(path)


if __name__ == "__main__":
    main()
