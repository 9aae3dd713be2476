"""The one trainer every model uses.

The dataset is held as one tensor on the training device and batches are taken by indexing a shuffled
permutation: for small image models the input pipeline, not arithmetic, is usually the bottleneck.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from genkit import metrics
from genkit.data import ImageData
from genkit.errors import ConfigError, TrainingError
from genkit.model import Model
from genkit.noise import NoiseTransform
from genkit.registry import get_noise


@dataclass
class TrainConfig:
    """How to train: the same options for every model."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    noise: str | None = None  # e.g. "gaussian:0.5": train a denoiser (noisy input -> clean target)
    kl_warmup: int = 0  # epochs over which the weight of the "kl" term ramps linearly from 0 to 1
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    compile: bool = False  # torch.compile the loss computation (pays off on GPUs for long runs)
    progress: bool = True
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ConfigError(f"kl_warmup must be a non-negative integer, got {self.kl_warmup!r}")
        if self.noise is not None:
            get_noise(self.noise)  # validate the spec early

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; any other name is checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps asked for, but MPS is not available: use --device cpu")
    return device


class Callback:
    """Hooks into training; override what you need."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class Trainer:
    """Trains any :class:`~genkit.Model` with Adam; resumable through :meth:`state_dict`."""

    def __init__(self, model: Model, config: TrainConfig | None = None, callbacks: list[Callback] | None = None):
        self.config = config or TrainConfig()
        self.device = select_device(self.config.device)
        self.model = model.to(self.device)
        self.callbacks = list(callbacks or [])
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.lr, fused=fused or None)
        self.noise: NoiseTransform | None = get_noise(self.config.noise) if self.config.noise else None
        # Separate generators so that shuffling and noise are reproducible whatever the model draws.
        self.shuffle_rng = torch.Generator().manual_seed(self.config.seed)
        self.noise_rng = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.compute_loss = torch.compile(model.loss) if self.config.compile else model.loss
        use_amp = self.config.amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    # -- state for checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {
            "torch": torch.get_rng_state(),
            "shuffle": self.shuffle_rng.get_state(),
            "noise": self.noise_rng.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "shuffle" in rng:
            self.shuffle_rng.set_state(rng["shuffle"])
        if "noise" in rng and self.device.type == "cpu":
            self.noise_rng.set_state(rng["noise"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.noise_rng.set_state(rng["noise"])

    # -- training -------------------------------------------------------------------------------
    def kl_weight(self, progress: float) -> float:
        """The KL warm-up weight after ``progress`` epochs (1 without warm-up)."""
        warmup = self.config.kl_warmup
        return 1.0 if warmup == 0 else min(1.0, progress / warmup)

    def fit(self, train: ImageData, test: ImageData | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done (continuing after a resume); returns the history."""
        if len(train) == 0:
            raise TrainingError("the training set is empty")
        self.model.check_input(train.images[:1])
        train_images = train.images.to(self.device)
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.epoch < self.config.epochs:
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": self.epoch + 1}
            record.update({f"train_{k}": v for k, v in self.train_epoch(train_images).items()})
            record["train_seconds"] = time.perf_counter() - started
            record["images_per_second"] = len(train) / record["train_seconds"]
            if test is not None and len(test):
                record.update({f"test_{k}": v for k, v in self.evaluate(test).items()})
            self.epoch += 1
            self.history.append(record)
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history

    def train_epoch(self, images: torch.Tensor) -> dict[str, float]:
        model, cfg = self.model, self.config
        model.train()
        order = torch.randperm(images.shape[0], generator=self.shuffle_rng).to(self.device)
        batches = order.split(cfg.batch_size)
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for step, index in enumerate(bar):
            clean = images[index]
            noisy = self.noise(clean, self.noise_rng) if self.noise else clean
            with self.autocast():
                out = self.compute_loss(noisy, clean)
            loss = out.weighted({"kl": self.kl_weight(self.epoch + step / len(batches))})
            # Stop before a non-finite loss can reach the weights: the last checkpoint stays good.
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {step + 1}; "
                    "lower --lr or check the data for NaN/inf values"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for name, value in out.terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach() * len(index)
            if step % 20 == 0 and cfg.progress:
                bar.set_postfix({k: f"{v.item() / ((step + 1) * cfg.batch_size):.2f}" for k, v in sums.items()})
        n = images.shape[0]
        terms = {name: value.item() / n for name, value in sums.items()}
        terms["loss"] = sum(terms.values())
        return terms

    @torch.no_grad()
    def evaluate(self, data: ImageData, noise: NoiseTransform | None = None) -> dict[str, float]:
        """Mean loss terms and reconstruction MSE (from the posterior mean) on ``data``.

        With ``noise`` (default: the training noise) the PSNR of the noisy inputs and of the model's
        outputs against the clean images are added.
        """
        model = self.model
        model.eval()
        noise = noise or self.noise
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        sums: dict[str, float] = {}
        n = len(data)
        for start in range(0, n, self.config.eval_batch_size):
            clean = data.images[start : start + self.config.eval_batch_size].to(self.device)
            k = clean.shape[0]
            with self.autocast():
                terms = model.loss(clean).terms
                recon = model.reconstruct(clean).float()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * k
            sums["mse"] = sums.get("mse", 0.0) + metrics.mse(recon, clean) * k
            if noise is not None:
                noisy = noise(clean, generator)
                with self.autocast():
                    denoised = model.reconstruct(noisy).float()
                sums["psnr_noisy"] = sums.get("psnr_noisy", 0.0) + metrics.psnr(noisy, clean) * k
                sums["psnr_denoised"] = sums.get("psnr_denoised", 0.0) + metrics.psnr(denoised, clean) * k
        result = {name: value / n for name, value in sums.items()}
        result["loss"] = sum(v for k, v in result.items() if k not in ("mse", "psnr_noisy", "psnr_denoised"))
        return result
