"""A run: train a registered model on a dataset and write everything a user wants to see into one folder."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genkit import distributed, report
from genkit.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    build_model_from_config,
    flat_settings,
    load_checkpoint,
    read_json,
    remove_stale_temporaries,
    run_config,
    run_lock,
    save_checkpoint,
    save_tensors,
    save_weights,
    upgrade_config,
    write_json,
)
from genkit.config import DataConfig, LoggingConfig
from genkit.data import ImageData, ImageFolderStream, dataset_shape, load_dataset
from genkit.errors import CheckpointError, ConfigError, GenkitError, PluginError, RunExistsError, TrainingError
from genkit.metrics import mean_image_mse
from genkit.model import Model
from genkit.registry import get_model, get_noise
from genkit.tensorboard import LOG_FOLDER, TensorBoardLogger, require_tensorboard
from genkit.train import Callback, TrainConfig, Trainer, device_name

#: Images a prior is fitted on when the training images are streamed from disk.
FIT_IMAGES = 20_000
#: Noise used for the denoising picture and PSNR when the model was not trained with noise.
DEFAULT_EVAL_NOISE = "gaussian:0.5"

Log = Callable[[str], None]


class StopOnNonFiniteWeights(Callback):
    """Stops before weights that became NaN or infinite (the loss can stay finite one step longer) are saved."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        state = trainer.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise TrainingError(
                f"the weights became NaN or infinite in epoch {trainer.epoch} (e.g. {bad[0]}); lower --lr"
            )


class CheckpointEveryEpoch(Callback):
    """Writes checkpoint, weights and metrics after every epoch (each file by write-then-rename)."""

    def __init__(self, run_dir: Path, summary: dict[str, Any], saved: int = 0) -> None:
        self.run_dir = run_dir
        self.summary = summary
        self.saved = saved  # the epoch of the checkpoint on disk

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if distributed.is_main():  # the others only count, so that their messages name the same checkpoint
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, trainer.state_dict())
            save_weights(trainer.model, self.run_dir / WEIGHTS_FILE)
            write_json(self.run_dir / METRICS_FILE, {**self.summary, "epochs": trainer.history})
        self.saved = trainer.epoch


def new_run_dir(
    model: str, dataset: str, out: str | os.PathLike[str] | None, overwrite: bool, log: Log = print
) -> Path:
    """The folder for a new run; an explicit ``out`` that holds files is refused unless ``overwrite``.

    Without ``out`` it is ``runs/MODEL-DATASET``, numbered ``-2``, ``-3``... past earlier runs, and ``log`` says so:
    a user who repeats a command may have meant to continue the earlier run.
    """
    if out is None:
        base = Path("runs") / f"{model}-{Path(dataset).name}"
        candidate, i = base, 1
        while candidate.exists() and any(candidate.iterdir()):
            i += 1
            candidate = base.with_name(f"{base.name}-{i}")
        if i > 1:
            earlier = candidate.with_name(f"{base.name}-{i - 1}") if i > 2 else base
            log(
                f"{earlier} holds an earlier run, so this new one goes to {candidate} "
                f"(to train the earlier one further instead: genkit run --resume {earlier} --epochs N)"
            )
        out = candidate
    run_dir = Path(out)
    _refuse_existing(run_dir, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _refuse_existing(run_dir: Path, overwrite: bool) -> None:
    """A folder holding files is never written into unless ``overwrite`` (and genkit never deletes files)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder: choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise RunExistsError(
            f"{run_dir} already exists and is not empty: pass --overwrite, choose another --out, or --resume it"
        )


def _load_data(data: DataConfig, model: Model) -> tuple[ImageData | ImageFolderStream, ImageData]:
    size, channels = model.config.image_size, model.config.image_channels
    train, test = load_dataset(data.dataset, data.data_dir, size, channels, data.stream)
    for split in (train, test):
        if isinstance(split, ImageData) and not torch.isfinite(split.images).all():
            raise ConfigError(f"dataset {data.dataset} contains NaN or infinite pixel values")
    return train.subset(data.limit), test.subset(data.limit)


def _try_one_batch(model: Model, data: ImageData | ImageFolderStream) -> None:
    """Run the model once on two training images, so that a broken plugin fails before any file is written."""
    if not len(data):
        return
    batch = data.images[:2] if isinstance(data, ImageData) else data.head(2)
    model.check_input(batch)
    model.eval()
    try:
        with torch.no_grad():
            model.loss(batch)
    except GenkitError:
        raise
    except Exception as exc:  # a plugin's forward or loss failing on images of the configured shape
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise PluginError(
            f"{model.plugin or model.name}: fails on a batch shaped {tuple(batch.shape)}: "
            f"{type(exc).__name__}: {reason}"
        ) from exc
    finally:
        model.train()


def _prepare(
    model_name: str,
    model_options: dict[str, Any] | None,
    parts: dict[str, str] | None,
    train: TrainConfig,
    data: DataConfig,
) -> tuple[Model, ImageData | ImageFolderStream, ImageData]:
    if data.noise is not None:
        get_noise(data.noise)  # a bad spec fails before the data is read
    torch.manual_seed(train.seed)
    native = dataset_shape(data.dataset)  # a registered dataset's images set the model's shape unless it is given
    if native:
        model_options = {"image_size": native[0], "image_channels": native[1], **(model_options or {})}
    model = get_model(model_name, **(parts or {}), **(model_options or {}))
    train_data, test_data = _load_data(data, model)
    _try_one_batch(model, train_data)
    return model, train_data, test_data


def check_run(
    model_name: str,
    model_options: dict[str, Any] | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    *,
    parts: dict[str, str] | None = None,
    logging: LoggingConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> None:
    """What ``start_run`` checks before it trains, writing nothing (run before launching processes)."""
    if logging and logging.tensorboard:
        require_tensorboard()
    _prepare(model_name, model_options, parts, train or TrainConfig(), data or DataConfig())
    if out is not None:
        _refuse_existing(Path(out), overwrite)


def start_run(
    model_name: str,
    model_options: dict[str, Any] | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    *,
    parts: dict[str, str] | None = None,
    logging: LoggingConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    log: Log = print,
) -> Path:
    """Train ``model_name`` from scratch and write a run folder; returns its path.

    ``parts`` chooses other parts by registry name (``{"prior": "vamp", "loss": "iwae"}``) and ``model_options``
    sets model and part options (``{"latent": 16, "loss.k": 5}``), as for ``genkit.get_model``. ``data`` names
    the dataset (``DataConfig(noise="gaussian:0.5")`` trains a denoiser) and ``logging`` what is written besides
    the results (TensorBoard logs, how ``latent.png`` is drawn). The run folder is ``out`` or
    ``runs/MODEL-DATASET``; one holding files is written into only with ``overwrite``.
    """
    train, data, logging = train or TrainConfig(), data or DataConfig(), logging or LoggingConfig()
    if logging.tensorboard:
        require_tensorboard()  # before anything is written
    model, train_data, test_data = _prepare(model_name, model_options, parts, train, data)
    # joins the process group when launched by torchrun
    trainer = Trainer(model, train, noise=get_noise(data.noise) if data.noise else None)
    run_dir = _on_main(lambda: new_run_dir(model_name, data.dataset, out, overwrite, log))
    with _held(run_dir):
        config = _write_config(run_dir, model, train, data, logging)
        return _train_and_report(run_dir, config, model, trainer, data, logging, train_data, test_data, log)


def _held(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The run folder's lock, taken by the main process (the others train into the same folder with it)."""
    return run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext()


def _on_main(make: Callable[[], Any]) -> Any:
    """Run ``make`` on the main process only and hand its result (or its error) to every process."""
    result: Any = None
    if distributed.is_main():
        try:
            result = make()
        except GenkitError as exc:
            result = exc
    result = distributed.broadcast(result)
    if isinstance(result, GenkitError):
        raise result
    return result


def resume_run(
    run_dir: str | os.PathLike[str],
    epochs: int | None = None,
    log: Log = print,
    *,
    data_dir: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Continue a run from its last checkpoint, with its recorded settings.

    Only what does not change the result may differ: a new number of ``epochs``, where the dataset lives on this
    machine (``data_dir``) and whether a progress bar shows.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist")
    with _held(run):
        return _resume(run, epochs, log, data_dir, progress)


def _resume(run: Path, epochs: int | None, log: Log, data_dir: str | None, progress: bool | None) -> Path:
    config = upgrade_config(read_json(run / CONFIG_FILE))
    given = {"epochs": epochs, "progress": progress}
    try:
        train = TrainConfig.from_dict({**config["train"], **{k: v for k, v in given.items() if v is not None}})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{run / CONFIG_FILE} is incomplete ({exc}); start a new run") from None
    except ConfigError as exc:
        raise CheckpointError(f"{run / CONFIG_FILE}: {exc}") from None
    data = run_data(config, run / CONFIG_FILE, data_dir)
    model = build_model_from_config(config, run / CONFIG_FILE)
    try:
        noise = get_noise(data.noise) if data.noise else None
        trainer = Trainer(model, train, noise=noise)
    except ConfigError as exc:  # e.g. a device this machine does not have
        raise CheckpointError(f"{run / CONFIG_FILE}: {exc}") from None
    state = load_checkpoint(run / CHECKPOINT_FILE)
    try:
        trainer.load_state_dict(state)
    except ValueError as exc:  # what load_state_dict checks
        raise CheckpointError(f"{run / CHECKPOINT_FILE} is tampered with or damaged: {exc}") from None
    except (KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{run / CHECKPOINT_FILE} does not fit this run's model ({type(exc).__name__})") from None
    if distributed.is_main():
        remove_stale_temporaries(run)  # left by a process killed while saving
        save_weights(model, run / WEIGHTS_FILE)  # the checkpoint is the truth: repair lagging or damaged weights
    extended = config["train"].get("epochs") != train.epochs
    # recorded as this release writes it (a genkit 0.1 run is upgraded), with the new number of epochs
    logging = _logging(config)
    config = _write_config(run, model, train, data, logging)
    note = ""
    if extended and train.lr_schedule == "cosine":  # only a constant rate continues as if planned from the start
        lr = trainer.learning_rate(trainer.epoch)
        note = f"; the cosine decay now spans {train.epochs} epochs, so the learning rate starts again at {lr:.3g}"
    log(f"resuming {run} after epoch {trainer.epoch} of {train.epochs}{note}")
    train_data, test_data = _load_data(data, model)
    return _train_and_report(run, config, model, trainer, data, logging, train_data, test_data, log)


def _silent(message: str) -> None:
    """Processes other than the main one print nothing."""


def run_data(config: dict[str, Any], path: Path, data_dir: str | None = None) -> DataConfig:
    """A run's data settings from its config (read from ``path``), with the dataset on this machine's ``data_dir``
    when one is given."""
    try:
        data = DataConfig.from_dict(config.get("data"), owner="its data section")
    except ConfigError as exc:
        raise CheckpointError(f"{path} is damaged: {exc}") from None
    return dataclasses.replace(data, data_dir=data_dir or data.data_dir)


def _logging(config: dict[str, Any]) -> LoggingConfig:
    """A run's logging and picture settings from its config; the defaults where they are missing or damaged (runs
    before genkit 0.2 recorded none), as they change no result."""
    try:
        return LoggingConfig.from_dict(config.get("logging") or {})
    except ConfigError:
        return LoggingConfig()


def _write_config(
    run_dir: Path, model: Model, train: TrainConfig, data: DataConfig, logging: LoggingConfig
) -> dict[str, Any]:
    """Record a run's settings in its ``config.json`` (from the main process); returns what was recorded."""
    config = {**run_config(model), "train": train.to_dict(), "data": data.to_dict(), "logging": logging.to_dict()}
    if distributed.is_main():
        write_json(run_dir / CONFIG_FILE, config)
    return config


def _train_and_report(
    run_dir: Path,
    config: dict[str, Any],
    model: Model,
    trainer: Trainer,
    data: DataConfig,
    logging: LoggingConfig,
    train: ImageData | ImageFolderStream,
    test: ImageData,
    log: Log,
) -> Path:
    summary = {
        "model": config["model"],
        "dataset": data.dataset,
        "device": str(trainer.device),
        "device_name": device_name(trainer.device),
        "train_images": len(train),
        "test_images": len(test),
    }
    checkpoint = CheckpointEveryEpoch(run_dir, summary, saved=trainer.epoch)
    # on every process, so that all of them stop together and name the same checkpoint
    trainer.callbacks += [StopOnNonFiniteWeights(), checkpoint]
    if not distributed.is_main():
        log = _silent
    elif logging.tensorboard:
        trainer.callbacks.append(TensorBoardLogger(run_dir / LOG_FOLDER, flat_settings(config), test.images))
    summary["processes"] = trainer.world
    log(f"training {config['model']} on {summary['dataset']} ({len(train)} images) on {trainer.device} -> {run_dir}")
    started = time.perf_counter()
    try:
        history = trainer.fit(train, test)
    except TrainingError as exc:
        if distributed.is_main():
            epochs = trainer.history[: checkpoint.saved]
            write_json(run_dir / METRICS_FILE, {**summary, "epochs": epochs, "stopped": str(exc)})
        if checkpoint.saved:
            raise TrainingError(
                f"{exc}; the checkpoint of epoch {checkpoint.saved} is kept in {run_dir} "
                f"(continue with --resume {run_dir})"
            ) from None
        raise TrainingError(f"{exc}; no epoch finished in {run_dir} (start it again with --overwrite)") from None
    noise = trainer.noise or get_noise(DEFAULT_EVAL_NOISE)
    final = trainer.evaluate(test, noise) if len(test) else {}
    seconds = sum(r["train_seconds"] for r in history)
    metrics = {
        **summary,
        "epochs": history,
        "test": {**final, "noise": noise.spec},
        "train_seconds": seconds,
        "images_per_second": len(train) * len(history) / seconds if seconds else None,
        "wall_seconds_this_session": time.perf_counter() - started,
    }
    if not distributed.is_main():
        return run_dir
    if model.prior.fitted_after_training:  # e.g. gmm: fitted to the training codes, saved with the weights
        model.prior.fit(model.codes(train.images if isinstance(train, ImageData) else train.head(FIT_IMAGES)))
        save_weights(model, run_dir / WEIGHTS_FILE)
        log(f"fitted the {model.prior.name or 'prior'} prior to the training codes")
    write_json(run_dir / METRICS_FILE, metrics)
    report.write_pictures(model, test, history, noise, run_dir, data.noise, logging.latent_plot)
    if final:
        if final["mse"] >= (floor := mean_image_mse(test.images)):
            log(
                f"warning: test MSE {final['mse']:.4f} is no better than the mean test image's {floor:.4f}: the "
                "model has not learned to reconstruct (too short a training, or a collapsed decoder: see "
                "reconstructions.png)"
            )
        # a model not trained on noise has never seen noisy inputs: its output is no denoised image
        output = "denoised" if data.noise else "model output, not trained as a denoiser"
        log(
            f"done: test MSE {final['mse']:.5f}, PSNR {final['psnr_noisy']:.1f} dB noisy -> "
            f"{final['psnr_denoised']:.1f} dB {output} ({noise.spec}); files in {run_dir}"
        )
    return run_dir


def fitted_prior(run_dir: str | os.PathLike[str], model: Model, name: str, data_dir: str | None = None) -> Path:
    """Install the prior ``name`` on a run's model, fitted to its training codes (cached as ``prior-NAME.safetensors``).

    A cached fit is reused; a damaged cache is fitted again. Returns the path of the cached prior file.
    """
    from safetensors.torch import load_file

    from genkit.priors import fit_prior
    from genkit.registry import get_prior

    run = Path(run_dir)
    path = run / f"prior-{name}.safetensors"
    if path.is_file():
        prior = get_prior(name, dims=model.config)
        try:
            prior.load_state_dict(load_file(str(path)))
        except Exception as exc:  # a stale or damaged cache is refitted, not fatal
            print(f"refitting {name} prior: {path} unusable ({type(exc).__name__})")
        else:
            model.prior = prior.to(model.device)
            return path
    prior = fit_prior(model, name, training_images(run, model, data_dir))
    save_tensors(prior, path)
    return path


def training_images(run_dir: str | os.PathLike[str], model: Model, data_dir: str | None = None) -> torch.Tensor:
    """A finished run's training images, to fit priors and code models to their codes (a streamed folder may not
    fit in memory: at most its first ``FIT_IMAGES``)."""
    path = Path(run_dir) / CONFIG_FILE
    train, _ = _load_data(run_data(read_json(path), path, data_dir), model)
    return train.images if isinstance(train, ImageData) else train.head(FIT_IMAGES)
