"""TensorBoard logs of a run (``genkit run --tensorboard``), through ``torch.utils.tensorboard``.

The ``tensorboard`` package is an extra: ``pip install 'genkit[tensorboard]'``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from genkit.errors import ConfigError
from genkit.train import Callback, Step, Trainer

#: the folder inside a run folder that holds the event files (``tensorboard --logdir RUN/tensorboard``)
LOG_FOLDER = "tensorboard"


def require_tensorboard() -> None:
    """A one-line ``ConfigError`` saying how to install TensorBoard, unless it is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'genkit[tensorboard]'")


class TensorBoardLogger(Callback):
    """Loss terms and the learning rate at the first step and every ``every`` steps; every epoch's losses and test
    metrics, a grid of samples and one of reconstructions of ``images``; the run's options as hparams with its final
    metrics."""

    def __init__(self, log_dir: Path, hparams: dict[str, Any], images: torch.Tensor, every: int = 10) -> None:
        """``hparams``: the run's settings as flat keys (``genkit.checkpoint.flat_settings``)."""
        require_tensorboard()
        self.log_dir = Path(log_dir)
        # TensorBoard's hparams take numbers, booleans and text
        self.hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        self.images = images[:8]
        self.every = every
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir))

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        if step.global_step % self.every and step.global_step != 1:  # the first step too: short runs show a curve
            return
        for name, value in step.terms.items():
            self.writer.add_scalar(f"step/{name}", value.item(), step.global_step)
        self.writer.add_scalar("step/lr", step.lr, step.global_step)

    @torch.no_grad()
    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        from torchvision.utils import make_grid

        epoch = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        model = trainer.model
        model.eval()
        if not model.prior.fitted_after_training:  # a gmm prior has no samples before it is fitted
            generator = torch.Generator(device=model.device).manual_seed(trainer.config.seed)
            samples = model.sample(16, generator).float().cpu().clamp(0, 1)
            self.writer.add_image("samples", make_grid(samples, nrow=8, pad_value=0.5), epoch)
        x = self.images.to(model.device)
        pairs = torch.cat([x, model.reconstruct(x).float()]).cpu().clamp(0, 1)
        self.writer.add_image("reconstructions", make_grid(pairs, nrow=len(x), pad_value=0.5), epoch)
        model.train()
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        last = trainer.history[-1] if trainer.history else {}
        final = {f"final/{k}": v for k, v in last.items() if k.startswith(("train_", "test_")) and _number(v)}
        self.writer.add_hparams(self.hparams, final, run_name=".")
        self.writer.close()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
