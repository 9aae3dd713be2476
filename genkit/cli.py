"""The ``genkit`` command line. Every user error ends as one line on stderr and exit code 2."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# Only light modules at the top: torch, numpy and the plugins are imported by the commands that need them,
# so that --help and usage errors answer at once.
from genkit.config import DATA_ENV, DataConfig, LoggingConfig, TrainConfig, parse_value
from genkit.errors import ConfigError, DataError, GenkitError, ShapeError, TrainingError

if TYPE_CHECKING:
    import torch

SEED = click.IntRange(-(2**40) + 1, 2**40 - 1)
#: ``--kind`` values, each the name of a registry in ``genkit.registry``
KINDS = ("datasets", "decoders", "encoders", "losses", "models", "noise", "priors")
COMMAND_LINE = click.core.ParameterSource.COMMANDLINE
#: what may be given with --resume: the rest of a run's settings are recorded and repeated exactly
RESUME_OPTIONS = {"resume", "epochs", "quiet", "nproc", "data_dir"}
PART_OF_KIND = {"encoders": "encoder", "decoders": "decoder", "priors": "prior", "losses": "loss"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks (for developers).")
@click.version_option(package_name="genkit")
def cli(debug: bool) -> None:
    """genkit: train, sample and benchmark autoencoders and VAEs."""


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--kind", type=click.Choice(KINDS), default="models", show_default=True, help="Which plugins.")
def list_cmd(pattern: str | None, kind: str) -> None:
    """List registered plugins (optionally matching a PATTERN such as '*vae*'); broken ones are flagged."""
    import fnmatch

    from genkit import listing

    group = f"genkit.{kind}"
    rows = listing.load(group)
    if rows is None:  # first listing, or the plugins changed: load them (imports torch)
        from genkit import registry

        rows = [
            listing.Row(info.name, info.distribution, broken=str(obj))
            if isinstance(obj, registry.FailedPlugin)
            else listing.Row(info.name, info.distribution, registry.describe(obj))
            for info, obj in registry.KINDS[kind].status()
        ]
        listing.save(group, rows)
    rows = [row for row in rows if pattern is None or fnmatch.fnmatch(row.name, pattern)]
    if not rows:
        click.echo(f"no {kind} plugins" + (f" match {pattern!r}" if pattern else ""))
        return
    width = max(len(row.name) for row in rows)
    for row in rows:
        if row.broken:
            click.echo(f"{row.name:<{width}}  BROKEN  {row.broken}")
        else:
            click.echo(f"{row.name:<{width}}  {row.description}  [{row.distribution}]")


def _option_lines(config: Any, prefix: str) -> list[str]:
    """One line per option of a config class or instance, as ``--set [PART.]KEY=VALUE`` the way genkit run takes it,
    with the instance's value (a preset's default) or the class default."""
    values = config.to_dict() if not isinstance(config, type) else config.defaults()
    lines = []
    for field, kind, _, help_text in config.describe_fields():
        value = values[field]
        setting = f"--set {prefix}{field}={value if isinstance(value, str) else json.dumps(value)}"
        lines.append(f"  {setting:<34} {kind:<6} {help_text}")
    return lines


@cli.command()
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default="models", show_default=True, help="Which plugins.")
def info(name: str, kind: str) -> None:
    """Describe plugin NAME: what it is, who provides it, its parts and every option with its default."""
    from genkit import registry

    reg = registry.KINDS[kind]
    obj = reg.load(name)
    click.echo(f"{name}: {registry.describe(obj)}")
    click.echo(f"provided by: {reg.info(name).distribution}")
    if kind in PART_OF_KIND:
        part = PART_OF_KIND[kind]
        click.echo(f"options (genkit run MODEL --{part} {name} --set {part}.KEY=VALUE):")
        for line in _option_lines(obj.config_class, f"{part}."):
            click.echo(line)
        return
    if kind != "models":
        return
    model = registry.get_model(name, check=False)
    click.echo("parts (swap one with --encoder/--decoder/--prior/--loss NAME):")
    for part in PART_OF_KIND.values():
        click.echo(f"  {part:<8} {model.part(part).name or type(model.part(part)).__name__}")
    click.echo("options (each line works as written after genkit run " + name + "):")
    for line in _option_lines(model.config, ""):
        click.echo(line)
    for part in PART_OF_KIND.values():
        current = model.part(part)
        if getattr(current, "name", ""):
            for line in _option_lines(current.config, f"{part}."):
                click.echo(line)


def _parse_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON (numbers, true/false) and otherwise kept as text."""
    options: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        options[key.replace("-", "_")] = parse_value(raw)
    return options


def train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add an option per ``TrainConfig`` field to ``command`` (``--batch-size`` for ``batch_size``...), with the
    field's help, choices and default; ``progress`` is the command's ``--quiet``."""
    hints = typing.get_type_hints(TrainConfig)
    for field in reversed(dataclasses.fields(TrainConfig)):
        if field.name == "progress":
            continue
        flag, kind = f"--{field.name.replace('_', '-')}", hints[field.name]
        switch = field.default is None or isinstance(field.default, bool)  # (0 == False: look them up apart)
        shown = {None: "unset", True: "on", False: "off"}[field.default] if switch else field.default
        text = f"{field.metadata['help']} [default: {shown}]."
        if kind in (bool, bool | None):  # a switch: --amp/--no-amp keeps "not given" apart from either value
            option = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=text)
        elif field.metadata.get("choices"):
            option = click.option(flag, field.name, type=click.Choice(field.metadata["choices"]), help=text)
        elif kind is int:
            low = 1 if field.name in TrainConfig.positive else 0 if field.name in TrainConfig.non_negative else None
            option = click.option(
                flag, field.name, type=click.INT if low is None else click.IntRange(min=low), help=text
            )
        elif kind is float:
            positive = field.name in TrainConfig.positive
            number = click.FloatRange(min=0, min_open=True) if positive else click.FLOAT
            option = click.option(flag, field.name, type=number, help=text)
        else:
            option = click.option(flag, field.name, help=text)
        command = option(command)
    return command


def _train_options(**given: Any) -> TrainConfig:
    """A TrainConfig from CLI values; options not given keep the dataclass defaults."""
    return TrainConfig(**{k: v for k, v in given.items() if v is not None})


@cli.command()
@click.argument("model", required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="An experiment file (TOML, JSON, YAML) or a run's config.json; the options given here override it.",
)
@click.option("--latent", type=click.IntRange(min=1), help="Size of the latent code.")
@click.option("--beta", type=click.FloatRange(min=0), help="Weight of the KL term (the loss's beta option).")
@click.option("--encoder", help="Encoder by registry name (genkit list --kind encoders).")
@click.option("--decoder", help="Decoder by registry name (genkit list --kind decoders).")
@click.option("--prior", help="Prior by registry name (genkit list --kind priors).")
@click.option("--loss", help="Loss by registry name (genkit list --kind losses).")
@train_options
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="[PART.]KEY=VALUE",
    help="A model option, or a part's (e.g. loss.k=5); genkit info MODEL lists them.",
)
@click.option("--noise", metavar="NAME:LEVEL", help="Train a denoiser on noisy inputs, e.g. gaussian:0.5.")
@click.option("--kl-warmup", type=click.IntRange(min=0), help="Epochs of linear KL warm-up (loss.kl_warmup).")
@click.option(
    "--dataset", default="mnist", show_default=True, help="A dataset (genkit list --kind datasets) or an image folder."
)
@click.option("--data-dir", envvar=DATA_ENV, help=f"Where datasets live (or ${DATA_ENV}); downloaded there if missing.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder [default: runs/MODEL-DATASET].")
@click.option("--overwrite", is_flag=True, help="Write into an existing --out folder.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this folder.")
@click.option("--limit", type=click.IntRange(min=1), help="Use at most N training and N test images (quick runs).")
@click.option("--stream", is_flag=True, help="Read an image folder's training images from disk each epoch.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs to RUN/tensorboard (an extra).")
@click.option(
    "--latent-plot",
    type=click.Choice(["tsne", "pca"]),
    help="How latent.png draws codes of more than 2 dimensions [default: tsne].",
)
@click.option("--nproc", type=click.IntRange(min=1), help="Train with N processes (DDP through torchrun).")
@click.pass_context
def run(
    ctx: click.Context,
    model: str | None,
    config_file: str | None,
    latent: int | None,
    beta: float | None,
    encoder: str | None,
    decoder: str | None,
    prior: str | None,
    loss: str | None,
    settings: tuple[str, ...],
    resume: str | None,
    dataset: str,
    data_dir: str | None,
    out: str | None,
    overwrite: bool,
    limit: int | None,
    stream: bool,
    quiet: bool,
    tensorboard: bool,
    latent_plot: str | None,
    nproc: int | None,
    noise: str | None,
    kl_warmup: int | None,
    **train: Any,
) -> None:
    """Train MODEL and write samples, latent plot, reconstructions, denoising, curves, weights and metrics."""
    from genkit import distributed
    from genkit.checkpoint import read_json
    from genkit.run import check_run, resume_run, start_run

    relaunch = bool(nproc and nproc > 1 and not distributed.launched())
    if relaunch and (train["batch_size"] or TrainConfig.batch_size) % nproc:
        raise ConfigError(f"batch size must be divisible by the {nproc} processes: change --batch-size or --nproc")
    if resume:
        # A resumed run repeats its recorded settings exactly; an option given with it would be silently ignored.
        given = [
            param.opts[0] if isinstance(param, click.Option) else param.name.upper()
            for param in ctx.command.params
            if param.name not in RESUME_OPTIONS and ctx.get_parameter_source(param.name) == COMMAND_LINE
        ]
        if given:
            raise click.UsageError(
                f"--resume continues a run as it was configured, so {', '.join(given)} cannot be changed: "
                "give only --resume RUN_DIR [--epochs N] [--quiet] [--nproc N] [--data-dir DIR]"
            )
        if relaunch:
            read_json(Path(resume) / "config.json")  # fail here, in one line, rather than in every process
            ctx.exit(_relaunch(nproc, ctx.obj["argv"]))
        resume_run(resume, epochs=train["epochs"], data_dir=data_dir, progress=False if quiet else None)
        return
    flags = {"latent": latent, "beta": beta, "loss.kl_warmup": kl_warmup}
    options = {**_parse_settings(settings), **{k: v for k, v in flags.items() if v is not None}}
    chosen = {"encoder": encoder, "decoder": decoder, "prior": prior, "loss": loss}
    parts = {kind: name for kind, name in chosen.items() if name}
    data = {"dataset": dataset, "data_dir": data_dir, "limit": limit, "stream": stream, "noise": noise}
    logging = {k: v for k, v in {"tensorboard": tensorboard, "latent_plot": latent_plot}.items() if v}  # flags given
    if config_file:
        from genkit.experiment import read_experiment

        experiment = read_experiment(config_file)
        given = {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) == COMMAND_LINE}
        model = model or experiment.model
        # a part swapped on the command line starts from its own defaults, not the file's part's options
        kept = {k: v for k, v in experiment.options.items() if k.partition(".")[0] not in parts}
        options, parts = {**kept, **options}, {**experiment.parts, **parts}
        train = {**experiment.train, **{k: v for k, v in train.items() if v is not None}}
        data.update({k: v for k, v in experiment.data.items() if k not in given and v is not None})
        logging = {**experiment.logging, **logging}
    if not model:
        raise click.UsageError("name a MODEL (see genkit list), give --config FILE, or --resume RUN_DIR")
    config = _train_options(**{**train, "progress": False if quiet else None})
    request = {
        "data": DataConfig(**data),
        "parts": parts,
        "logging": LoggingConfig.from_dict(logging),
        "out": out,
        "overwrite": overwrite,
    }
    if relaunch:
        check_run(model, options, config, **request)  # user errors: one line here, not one per process
        ctx.exit(_relaunch(nproc, ctx.obj["argv"]))
    start_run(model, options, config, **request)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2,...", help="An option and its values (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep folder [default: sweeps/MODEL-KEYS].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs trained at once.")
@click.pass_context
def sweep(ctx: click.Context, model: str, grids: tuple[str, ...], out: str | None, jobs: int) -> None:
    """Train MODEL once per point of the --grid options (any other genkit run option applies to every run),
    then compare them. Run it again to continue a sweep that was stopped: finished runs are kept."""
    from genkit import sweep as sweeps

    grid = sweeps.parse_grid(grids)
    folder = Path(out or Path("sweeps") / f"{model}-{'-'.join(grid)}")
    run_args = list(ctx.args)
    bad = [a for a in run_args if a in ("--out", "--resume", "--config") or a.startswith(("--out=", "--resume="))]
    if bad:
        raise click.UsageError(f"{bad[0]} cannot be given to a sweep: each point's run folder is SWEEP/POINT")
    try:  # parse one point's run command now, so that a typo fails here rather than in every run
        run.make_context("genkit run", [model, *run_args, *sweeps.point_args(sweeps.points(grid)[0])])
    except click.ClickException as exc:
        raise click.UsageError(f"as genkit run would say: {exc.format_message()}") from None
    runs = len(sweeps.points(grid))
    click.echo(f"sweeping {model} over {', '.join(grid)}: {runs} runs into {folder}")
    sweeps.run_sweep(model, grid, run_args, folder, jobs, log=click.echo)
    sweeps.compare([str(folder)], folder, log=click.echo)


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), help="Where to write [default: the sweep, or compare/].")
@click.option("--fid", "fid_samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also score N samples of each run by FID (pytorch-fid; cached in RUN/eval.json).")  # fmt: skip
def compare(runs: tuple[str, ...], out: str | None, fid_samples: int) -> None:
    """Compare finished RUNS (run folders, or a sweep folder): a table, plots of each metric against each
    option that differs between them, and their samples side by side."""
    from genkit import sweep as sweeps

    sweeps.compare(list(runs), Path(out) if out else None, fid_samples, log=click.echo)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--nll", is_flag=True, help="Also the importance-sampled test NLL in nats and bits/dim.")
@click.option("--samples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Importance samples per image for --nll (more: a tighter, slower estimate).")  # fmt: skip
@click.option("--fid", "fid_samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also the FID of N samples against N test images (pytorch-fid).")  # fmt: skip
@click.option(
    "--noise", metavar="NAME:LEVEL", help="Noise for the denoising PSNR [default: the run's, else gaussian:0.5]."
)
@click.option("--limit", type=click.IntRange(min=1), help="Score the first N test images [default: the run's own].")
@click.option("--prior", help="Score and sample with a prior fitted to the training codes (e.g. gmm).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Fixes the noise and the importance samples.")
@click.option("--data-dir", envvar=DATA_ENV, help="Where the run's dataset lives.")
def eval_cmd(
    run_dir: str,
    nll: bool,
    samples: int,
    fid_samples: int,
    noise: str | None,
    limit: int | None,
    prior: str | None,
    device: str,
    seed: int,
    data_dir: str | None,
) -> None:
    """Score a finished run on its test set: MSE, PSNR, and on request NLL and FID; saved in RUN/eval.json."""
    from genkit.evaluate import evaluate_run

    record = evaluate_run(
        run_dir, nll=nll, samples=samples, fid_samples=fid_samples, noise=noise, limit=limit, prior=prior,
        device=device, data_dir=data_dir, seed=seed, log=click.echo,
    )  # fmt: skip
    test = record["test"]
    rows = [
        ("test MSE", f"{test['mse']:.5f}"),
        ("PSNR", f"{test['psnr']:.2f} dB (reconstructions of the clean images)"),
        (f"PSNR {test['noise']}", f"{test['psnr_noisy']:.2f} dB noisy -> {test['psnr_denoised']:.2f} dB denoised"),
    ]
    if "nll" in record:
        found = record["nll"]
        if "unavailable" in found:
            rows.append(("NLL", found["unavailable"]))
        else:
            rows.append(("NLL", f"{found['nats']:.2f} ± {found['stderr']:.2f} nats ({found['bits_per_dim']:.4f} "
                                f"bits/dim; K={found['samples']}, {found['likelihood']} p(x|z))"))  # fmt: skip
            if found["likelihood"] == "bernoulli" and not test["binarized"]:
                rows.append(("", "grey levels under a Bernoulli p(x|z) are not a normalised likelihood: train with "
                                 "--binarize for numbers comparable with the literature"))  # fmt: skip
            elif found["likelihood"] == "logistic":
                rows.append(("", "a probability of the 8-bit pixels: bits/dim is the length of a lossless code "
                                 "(genkit compress --lossless comes within a few percent of the ELBO's)"))  # fmt: skip
    if "fid" in record:
        found = record["fid"]
        rows.append(("FID", f"{found['value']:.2f} ({found['samples']} samples, {found['prior']} prior)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo(f"wrote {Path(run_dir) / 'eval.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="How many samples (one grid image, at most 10000).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="PNG grid [default: RUN/samples-PRIOR-N.png].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--prior",
    help="Prior to sample from, fitted to the training codes (e.g. gmm) [default: the run's own prior].",
)
@click.option("--data-dir", envvar=DATA_ENV, help="Where the run's dataset lives (to fit a prior).")
def sample(run_dir: str, count: int, output: str | None, seed: int, prior: str | None, data_dir: str | None) -> None:
    """Draw samples from a trained run's prior into a PNG grid."""
    from genkit import report
    from genkit.checkpoint import load_model
    from genkit.run import fitted_prior

    model = load_model(run_dir)
    if prior is not None and prior != model.prior.name:
        click.echo(f"{prior} prior: {fitted_prior(run_dir, model, prior, data_dir)}")
    name = prior or model.prior.name or "prior"
    path = Path(output or Path(run_dir) / f"samples-{name}-{count}.png")
    _check_image_suffix(path)
    report.save_samples(model, path, n=count, seed=seed)
    click.echo(f"wrote {count} samples to {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--noise", metavar="NAME:LEVEL", help="Corrupt the images first (to measure); else they are taken as noisy."
)
@click.option("-o", "--output", type=click.Path(file_okay=False), default="denoised", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def denoise(run_dir: str, images: tuple[str, ...], noise: str | None, output: str, seed: int) -> None:
    """Denoise IMAGES with a trained run; with --noise, report PSNR before and after."""
    from genkit.checkpoint import load_model
    from genkit.data import load_images, save_png
    from genkit.metrics import psnr
    from genkit.noise import seeded_generator
    from genkit.registry import get_noise

    model = load_model(run_dir)
    batch = load_images(list(images), model.config.image_size, model.config.image_channels)
    noisy = get_noise(noise)(batch, seeded_generator(seed)) if noise else batch
    denoised = model.reconstruct(noisy)
    out = Path(output)
    _refuse_clashes([Path(p).stem for p in images], images, out, "-denoised.png")
    out.mkdir(parents=True, exist_ok=True)
    for path, noisy_image, clean_image in zip(images, noisy, denoised, strict=True):
        stem = Path(path).stem
        if noise:
            save_png(noisy_image, out / f"{stem}-noisy.png")
        save_png(clean_image, out / f"{stem}-denoised.png")
    if noise:
        click.echo(f"PSNR {psnr(noisy, batch):.2f} dB noisy -> {psnr(denoised, batch):.2f} dB denoised ({noise})")
    click.echo(f"wrote {len(images)} denoised image(s) to {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The compressed file.")
@click.option("--step", type=click.FloatRange(min=0, min_open=True),
              help="Quantisation step, in standard deviations of each code dimension [default: 0.5] (not for vq "
                   "models or a compressor, whose codes are integers already).")  # fmt: skip
@click.option("--lossless", is_flag=True,
              help="Exact 8-bit pixels by bits-back coding (a VAE trained with the logistic likelihood).")  # fmt: skip
@click.option("--data-dir", envvar=DATA_ENV, help="Where the run's dataset lives (to fit the code model once).")
def compress(
    run_dir: str, images: tuple[str, ...], output: str, step: float | None, lossless: bool, data_dir: str | None
) -> None:
    """Compress IMAGES into one file: quantised latent codes, entropy-coded (constriction's range coder), or
    with --lossless the exact pixels by bits-back coding with ANS."""
    from genkit import compress as gkc
    from genkit.checkpoint import WEIGHTS_FILE, load_model
    from genkit.data import ImageFiles, iter_image_batches
    from genkit.files import atomic_write_bytes
    from genkit.metrics import psnr

    model = load_model(run_dir).eval()
    if lossless:
        if step is not None:
            raise click.UsageError("--step does not apply with --lossless: the pixels are coded exactly")
        _compress_lossless(run_dir, model, ImageFiles(list(images), *_image_format(model)), output)
        return
    if step is not None and gkc.prior_tables(model):
        raise click.UsageError(f"--step does not apply to {run_dir}: its codes are integers under its own prior")
    step = 0.5 if step is None else step
    code_model, code_path = gkc.run_code_model(run_dir, model, step, data_dir, log=click.echo)
    writer, psnr_sum = gkc.CodeWriter(model, code_model), 0.0
    for batch in iter_image_batches(list(images), *_image_format(model), batch_size=gkc.BATCH):
        decoded = writer.add(batch)
        psnr_sum += psnr(decoded, batch) * len(batch)
    data = writer.finish(gkc.sha256(Path(run_dir) / WEIGHTS_FILE), gkc.sha256(code_path), step)
    atomic_write_bytes(Path(output), data, parents=False)
    n = writer.count
    bpp = gkc.bits_per_pixel(len(data), n, tuple(writer.shape))
    header = len(data) - len(gkc.read_header(data, output)[1])
    click.echo(
        f"{n} image(s) -> {output}: {len(data)} bytes, {len(data) / n:.1f} bytes/image ({bpp:.3f} bits/pixel), "
        f"PSNR {psnr_sum / n:.2f} dB; the codes take {(len(data) - header) / n:.1f} bytes/image (the code "
        f"model expects {writer.ideal_bits / 8 / n:.1f}), the header {header} bytes"
    )


def _image_format(model: Any) -> tuple[int, int]:
    return model.config.image_size, model.config.image_channels


def _compress_lossless(run_dir: str, model: Any, images: Any, output: str) -> None:
    from genkit import bitsback
    from genkit import compress as gkc
    from genkit.checkpoint import WEIGHTS_FILE
    from genkit.files import atomic_write_bytes

    bitsback.check_model(model, run_dir)
    data = bitsback.compress(model, images, gkc.sha256(Path(run_dir) / WEIGHTS_FILE))
    header, words = gkc.read_header(data, output)
    n, shape = len(images), tuple(header["shape"])
    try:  # decoded before it is written: decompress checks the pixels' sha256 against the header's; the -ELBO
        # is scored on the decoded pixels (the same as the files') as they come
        elbo = bitsback.elbo_bits(model, (image[0] for image in bitsback.decompress(model, header, words, output)))
    except DataError:
        raise DataError(f"lossless coding did not round-trip on this machine; {output} was not written") from None
    atomic_write_bytes(Path(output), data, parents=False)
    expected = elbo / (n * shape[1] * shape[2])
    click.echo(
        f"{n} image(s) -> {output}: {len(data)} bytes, {len(data) / n:.1f} bytes/image, "
        f"{gkc.bits_per_pixel(len(data), n, shape):.3f} bits/pixel, lossless (decoded and checked "
        f"here); the model's -ELBO is {expected:.3f} bits/pixel, the header {len(data) - len(words)} bytes"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs (new).")
@click.option("--data-dir", envvar=DATA_ENV, help="Where the run's dataset lives (to fit the code model once).")
def decompress(run_dir: str, file: str, output: str, data_dir: str | None) -> None:
    """Decode a file from genkit compress with the same run into PNGs (00000.png, ...)."""
    import shutil
    import tempfile

    from genkit import bitsback
    from genkit import compress as gkc
    from genkit.checkpoint import WEIGHTS_FILE, load_model
    from genkit.data import save_png
    from genkit.files import require_regular_file

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder: name a new one")
    data = require_regular_file(file, "compressed file").read_bytes()
    header, words = gkc.read_header(data, file)
    model = load_model(run_dir).eval()
    if header.get("model_sha256") != gkc.sha256(Path(run_dir) / WEIGHTS_FILE):
        raise DataError(f"{file} was compressed with another model than {run_dir}: decode it with that run")
    if header.get("mode") == bitsback.MODE:
        batches = bitsback.decompress(model, header, words, file)
    else:
        code_model, code_path = gkc.run_code_model(run_dir, model, float(header.get("step") or 0.5), data_dir)
        if gkc.sha256(code_path) != header.get("code_model_sha256"):
            raise DataError(f"{file} was coded with another code model than {code_path}: compress the images again")
        batches = gkc.decompress(model, data, code_model, file)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:  # into a hidden folder first: a failure leaves no partial output
        index = 0
        for batch in batches:
            for image in batch:
                save_png(image, staging / f"{index:05d}.png")
                index += 1
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    click.echo(f"wrote {index} image(s) to {out} ({len(data) / index:.1f} bytes/image in {file})")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="codes.npz", show_default=True)
def encode(run_dir: str, images: tuple[str, ...], output: str) -> None:
    """Compress IMAGES to latent codes (float16) in an .npz; report the rate and the reconstruction PSNR."""
    import numpy as np
    import torch

    from genkit.checkpoint import load_model
    from genkit.data import load_images
    from genkit.files import atomic_write
    from genkit.metrics import psnr

    model = load_model(run_dir)
    batch = load_images(list(images), model.config.image_size, model.config.image_channels)
    with torch.no_grad():
        codes = model.encode(batch).mean.to(torch.float16)
        quality = psnr(model.decode(codes.float()), batch)  # what a decoder will see: the float16 codes
    names = np.array([Path(p).name for p in images])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary name
            np.savez(f, codes=codes.numpy(), names=names)

    atomic_write(Path(output), write, parents=False)
    raw = batch[0].numel()  # 8-bit pixels
    coded = codes[0].numel() * codes.element_size()
    click.echo(
        f"{len(images)} image(s) -> {output}: {coded} bytes/image vs {raw} raw ({raw / coded:.1f}x smaller), "
        f"reconstruction PSNR {quality:.2f} dB"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("codes", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default="decoded", show_default=True)
def decode(run_dir: str, codes: str, output: str) -> None:
    """Decode an .npz of latent codes (from genkit encode) back to PNG images."""
    import torch

    from genkit.checkpoint import load_model
    from genkit.data import save_png

    model = load_model(run_dir)
    z, names = read_codes(codes, model.config.latent)
    out = Path(output)
    _refuse_clashes([Path(n).stem for n in names], names, out, ".png")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        decoded = model.decode(z)
    for name, image in zip(names, decoded, strict=True):
        save_png(image, out / f"{Path(name).stem}.png")
    click.echo(f"wrote {len(names)} image(s) to {out}")


def read_codes(path: str, latent: int) -> tuple[torch.Tensor, list[str]]:
    """Codes and names from an .npz written by ``genkit encode``, checked against the model's latent size."""
    import zipfile

    import numpy as np
    import torch

    from genkit.files import require_regular_file

    require_regular_file(path, "codes file")
    problem = f"{path} is not a codes file written by genkit encode"
    try:
        with np.load(path, allow_pickle=False) as data:
            codes = data["codes"]
            names = data["names"] if "names" in data else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # BadZipFile: truncated or bad CRC
        raise DataError(f"{problem} ({exc})") from None
    if codes.dtype.kind not in "fiu" or codes.ndim != 2 or codes.shape[1] != latent:
        raise ShapeError(f"{path} holds codes {codes.dtype} {codes.shape}; this run's model needs floats (N, {latent})")
    if len(codes) == 0:
        raise DataError(f"{path} holds no codes")
    z = torch.from_numpy(codes.astype(np.float32))
    if not torch.isfinite(z).all():
        raise DataError(f"{path} holds NaN or infinite codes")
    if names is None:
        return z, [f"{i:05d}" for i in range(len(z))]
    if names.dtype.kind != "U" or names.shape != (len(z),):
        raise DataError(f"{problem} (its names are {names.dtype} {names.shape}, not {len(z)} strings)")
    listed = [str(n) for n in names]
    bad = next((n for n in listed if "\0" in n or not Path(n).stem), None)
    if bad is not None:
        raise DataError(f"{problem} (name {bad!r} cannot be a file name)")
    return z, listed


def _refuse_clashes(stems: list[str], sources: Sequence[str], out: Path, suffix: str) -> None:
    """Two inputs that would be written to the same output file are a user error, not a silent overwrite."""
    seen: dict[str, str] = {}
    for stem, source in zip(stems, sources, strict=True):
        if stem in seen:
            raise DataError(
                f"{seen[stem]} and {source} would both be written to {out / (stem + suffix)}: "
                "rename one of them or run them separately"
            )
        seen[stem] = str(source)


def _check_image_suffix(path: Path) -> None:
    from genkit.files import image_format

    try:
        image_format(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-o") from None


def _relaunch(nproc: int, argv: list[str]) -> int:
    """Run the same command under torchrun in ``nproc`` processes; returns its exit code."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    from genkit import distributed

    code = distributed.launch(nproc, args, verbose=_debug_wanted(argv))
    return 2 if code else 0


def _echo_error(message: str) -> None:
    """Print ``message`` as exactly one line on stderr (its line breaks become spaces)."""
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    click.echo(f"genkit: error: {one_line}", err=True)


def _debug_wanted(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("GENKIT_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors become one line on stderr (``--debug`` re-raises)."""
    from genkit import distributed  # light: it imports torch only when a process group is used

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_wanted(args)
    try:
        result = cli.main(args=args, prog_name="genkit", standalone_mode=False, obj={"argv": args})
        return result if isinstance(result, int) else 0
    except click.ClickException as exc:
        _echo_error(exc.format_message())
        return 2  # a usage error (click gives exit code 1 to some, which here means an internal error)
    except click.Abort as exc:  # click turns Ctrl-C into Abort, after a blank line that ends the terminal's ^C
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
        if not distributed.launched():  # under torchrun the launching process reports it, once
            _echo_error("interrupted; a run can be continued with --resume RUN_DIR" if interrupted else "aborted")
        return 130
    except GenkitError as exc:
        if debug:
            raise
        # Every process of a distributed run stops on the same training error: the main one reports it.
        if not (isinstance(exc, TrainingError) and not distributed.is_main()):
            _echo_error(str(exc))
        return 2
    except KeyboardInterrupt:
        if not distributed.launched():
            _echo_error("interrupted; a run can be continued with --resume RUN_DIR")
        return 130
    except OSError as exc:  # the environment, not genkit: a full disk, a missing or unwritable folder
        if debug:
            raise
        message = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        if exc.errno == errno.ENOSPC:
            message += " (free some space, then run the command again; --resume continues a run)"
        _echo_error(message)
        return 2
    except Exception as exc:  # a bug, not a user error: still one line, with the way to see more
        if debug:
            raise
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's, not imported here
            _echo_error("out of memory: use a smaller --batch-size, model or dataset")
            return 2
        _echo_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
    finally:
        distributed.shutdown()
