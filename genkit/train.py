"""The one trainer every model uses.

The dataset is held as one tensor on the training device and batches are taken by indexing a shuffled
permutation: for small image models the input pipeline, not arithmetic, is usually the bottleneck.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler
from tqdm.auto import tqdm

from genkit import distributed, metrics
from genkit.config import DEVICES, LR_SCHEDULES, SEED_LIMIT, TrainConfig  # noqa: F401  (their home before 0.2)
from genkit.data import ImageData, binarize
from genkit.errors import ConfigError, TrainingError
from genkit.losses import ramp
from genkit.model import Model
from genkit.noise import NoiseTransform
from genkit.parts import Batch

#: prefix of the adversary's loss terms in the training history (they are not part of the model's loss)
ADVERSARY = "adversary_"


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


def epoch_sampler(
    dataset: Dataset, world: int, rank: int, seed: int, epoch: int, generator: torch.Generator
) -> Sampler:
    """The order of a streamed epoch: PyTorch's ``DistributedSampler`` (a disjoint shard per process) when
    several processes train, else a seeded random permutation."""
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler
    return RandomSampler(dataset, generator=generator)


def device_name(device: torch.device) -> str:
    """A readable name of ``device``: the GPU's model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # platform.processor() is only the architecture on Linux ("x86_64"); timings need the CPU model
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name") and ":" in line:
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    return platform.processor() or platform.machine()


@dataclass
class Step:
    """The optimizer step just taken, as a per-step callback sees it."""

    global_step: int  #: steps taken since training began, over all epochs (1 after the first)
    epoch: int  #: the (1-based) epoch the step belongs to
    progress: float  #: epochs done, with the fraction of this one
    lr: float
    images: int  #: images in this process's batch
    #: the batch's mean loss terms, detached and still on the device: reading one (``.item()``) waits for the
    #: device, so log every N steps rather than every step on a GPU
    terms: dict[str, torch.Tensor]


class Callback:
    """Hooks into training; override what you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch of ``Trainer.fit``."""

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        """After each optimizer step (called only for callbacks that override it)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each epoch, with that epoch's record (losses, test metrics, speed)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""


class Trainer:
    """Trains any ``genkit.Model`` with Adam; resumable through ``state_dict``."""

    #: steps between reads of device values (non-finite check, progress bar); each read waits for the device
    sync_every = 50

    def __init__(
        self,
        model: Model,
        config: TrainConfig | None = None,
        callbacks: list[Callback] | None = None,
        noise: NoiseTransform | None = None,
    ):
        self.config = config or TrainConfig()
        self.device = distributed.setup(self.config.device) or select_device(self.config.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.config.batch_size % self.world:
            raise ConfigError(f"batch size {self.config.batch_size} must be divisible by the {self.world} processes")
        # Channels-last weights are opt-in: the conv models train 2-12% faster on a 2-core CPU, but a user's net
        # that calls .view() after a convolution breaks under the changed layout.
        self.layout = torch.channels_last if self.config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=self.layout)
        self.callbacks = list(callbacks or [])
        # A loss may train a network against the model (a GAN-style discriminator) with an optimizer of its own.
        self.adversary = model.loss_fn.adversary()
        if self.adversary is not None and self.world > 1:
            raise ConfigError(f"{model.loss_fn.label()} trains an adversary, which runs in one process: drop --nproc")
        self.optimizer = self._make_optimizer()
        self.adversary_optimizer = self._make_optimizer(self.adversary) if self.adversary is not None else None
        self.noise = noise
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        loss_module: nn.Module = _LossModule(model)
        if self.world > 1:
            # PyTorch's own DDP: gradients are averaged across processes during backward.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            loss_module = DistributedDataParallel(loss_module, device_ids=device_ids)
        self.loss_module = torch.compile(loss_module) if self.config.compile else loss_module
        amp = self.config.amp
        use_amp = amp is True or (amp is None and self.device.type == "cuda")
        kind = self.device.type
        self.autocast = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    def _model_parameters(self) -> list[nn.Parameter]:
        """The parameters the model's optimizer trains: all but the adversary's."""
        theirs = {id(p) for p in self.adversary.parameters()} if self.adversary is not None else set()
        return [p for p in self.model.parameters() if id(p) not in theirs]

    def _make_optimizer(self, module: nn.Module | None = None) -> torch.optim.Optimizer:
        # The fused kernel is the fastest Adam and the one that can skip a step on the device (found_inf).
        params = list(module.parameters()) if module is not None else self._model_parameters()
        return torch.optim.Adam(params, lr=self.config.lr, fused=True)

    def _check_optimizer(self) -> None:
        """A part swapped after the trainer was built (e.g. a learned prior) must not be left out of training."""
        owned = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if owned != {id(p) for p in self._model_parameters()}:
            if self.epoch or self.optimizer.state:
                raise ConfigError("the model's parameters changed after training started; build a new Trainer")
            self.model.to(self.device, memory_format=self.layout)
            self.optimizer = self._make_optimizer()

    # -- state for checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Epoch, model, optimizer and history: everything a resume needs."""
        # No RNG state is needed: every epoch reseeds from (seed, epoch, rank), so a resumed run repeats
        # exactly what an uninterrupted one does.
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        }
        if self.adversary_optimizer is not None:
            state["adversary_optimizer"] = self.adversary_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()``; a state that does not fit this model and optimizer is a ``ValueError``
        naming what is wrong, raised before anything reaches torch (a mis-shaped Adam moment can crash it)."""
        optimizers = {"optimizer": self.optimizer, "adversary_optimizer": self.adversary_optimizer}
        for key, optimizer in optimizers.items():
            if optimizer is not None:
                if key not in state:
                    raise ValueError(f"the state has no {key.replace('_', ' ')}")
                params = [p for group in optimizer.param_groups for p in group["params"]]
                _check_optimizer_state(state[key], optimizer.state_dict(), params)
        history = state.get("history", [])
        for record in history:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in record.values())
            if not numbers or not {"epoch", "train_loss", "train_seconds"} <= set(record):
                raise ValueError("a history record lacks epoch, train_loss or train_seconds, or holds a non-number")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adversary_optimizer is not None:
            self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(history)

    def _seed_epoch(self) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
        """Generators for this epoch's shuffle (shared by all processes), noise and the loss's draws (per process)."""
        base = self.config.seed * 1_000_003 + self.epoch
        torch.manual_seed(base * 7 + 1 + self.rank)  # anything a plugin draws without the generator (e.g. dropout)
        shuffle = torch.Generator().manual_seed(base)
        noise = torch.Generator(device=self.device).manual_seed(base * 7 + 2 + self.rank)
        draws = torch.Generator(device=self.device).manual_seed(base * 7 + 3 + self.rank)
        return shuffle, noise, draws

    # -- training -------------------------------------------------------------------------------

    def learning_rate(self, progress: float, step: float = 0.0) -> float:
        """The learning rate of a step that starts after ``progress`` epochs and lasts ``step`` epochs: the warm-up
        ramp at the step's end (so that the first step is not of size 0) times the schedule at its start."""
        cfg = self.config
        lr = cfg.lr * ramp(progress + step, cfg.lr_warmup)
        if cfg.lr_schedule == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress / cfg.epochs)))
        return lr

    def fit(self, train: ImageData | Dataset, test: ImageData | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done (continuing after a resume); returns the history."""
        if len(train) == 0:
            raise TrainingError("the training set is empty")
        self._check_optimizer()
        streamed = not isinstance(train, ImageData)
        self.model.check_input(train.head(1) if streamed else train.images[:1])
        train_images = None if streamed else train.images.to(self.device)
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.epoch < self.config.epochs:
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": self.epoch + 1}
            terms = self.train_epoch_streamed(train) if train_images is None else self.train_epoch(train_images)
            record.update({f"train_{k}": v for k, v in terms.items()})
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
        """One pass over ``images`` (already on the device); returns the mean loss terms."""
        shuffle_rng, noise_rng, draws = self._seed_epoch()
        order = torch.randperm(images.shape[0], generator=shuffle_rng).to(self.device)
        # Every process walks the same global batches and trains on its own slice of each.
        batches = [b for b in order.split(self.config.batch_size) if len(b) >= self.world]
        local = (images[b.tensor_split(self.world)[self.rank]] for b in batches)
        return self._run_batches(local, len(batches), noise_rng, draws)

    def train_epoch_streamed(self, dataset: Dataset) -> dict[str, float]:
        """One pass over a dataset read from disk; each process reads its own shard (``DistributedSampler``)."""
        shuffle_rng, noise_rng, draws = self._seed_epoch()
        loader = DataLoader(
            dataset,
            batch_size=self.config.batch_size // self.world,
            sampler=epoch_sampler(dataset, self.world, self.rank, self.config.seed, self.epoch, shuffle_rng),
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )
        batches = (images.to(self.device, non_blocking=True) for images, _ in loader)
        return self._run_batches(batches, len(loader), noise_rng, draws)

    def _run_batches(
        self, batches: Iterable[torch.Tensor], count: int, noise_rng: torch.Generator, draws: torch.Generator
    ) -> dict[str, float]:
        model, cfg = self.model, self.config
        model.train()
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        # None leaves it to tqdm: a bar on a terminal, none in a redirected log (its refreshes would fill the file)
        hide = None if cfg.progress is None else not cfg.progress
        if not distributed.is_main():  # one bar per job: the other processes' would overwrite it
            hide = True
        step_hooks = [c for c in self.callbacks if type(c).on_step_end is not Callback.on_step_end]
        bar = tqdm(batches, total=count, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=hide, leave=False)
        with _NonFiniteGuard(self.optimizer, self.device, self.epoch + 1) as guard:
            for step, clean in enumerate(bar):
                if cfg.binarize:  # dynamic binarisation: fresh Bernoulli draws of the grey levels every epoch
                    clean = torch.bernoulli(clean, generator=noise_rng)
                noisy = self.noise(clean, noise_rng) if self.noise else clean
                progress = self.epoch + step / count
                with self.autocast():
                    loss, terms = self.loss_module(noisy, clean, draws, progress)
                lr = self.learning_rate(progress, 1 / count)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                guard.check(step, loss)  # on the device: the optimizer itself skips a non-finite step
                self.optimizer.step()
                if self.adversary_optimizer is not None:
                    terms = {**terms, **self._adversary_step(noisy, clean, draws, progress, lr)}
                if step_hooks:
                    done = Step(
                        self.epoch * count + step + 1,
                        self.epoch + 1,
                        progress,
                        lr,
                        len(clean),
                        {k: v.detach() for k, v in terms.items()},
                    )
                    for callback in step_hooks:
                        callback.on_step_end(self, done)
                seen += len(clean)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() * len(clean)
                # Reading a value waits for the device, so it happens only every `sync_every` steps.
                if (step + 1) % self.sync_every == 0:
                    guard.raise_if_tripped()
                    if not bar.disable:  # tqdm decided: it may have found no terminal
                        bar.set_postfix({k: f"{v.item() / seen:.2f}" for k, v in sums.items()})
        names = sorted(sums)
        local = torch.stack([*(sums[k].cpu() for k in names), torch.tensor(float(seen))])
        totals = distributed.all_reduce_sum(local)
        terms = {name: value.item() / totals[-1].item() for name, value in zip(names, totals[:-1], strict=True)}
        terms["loss"] = sum(v for k, v in terms.items() if not k.startswith(ADVERSARY))
        return terms

    def _adversary_step(
        self, x: torch.Tensor, target: torch.Tensor, draws: torch.Generator, progress: float, lr: float
    ) -> dict[str, torch.Tensor]:
        """One step of the loss's adversary on the batch the model just trained on; its terms, prefixed."""
        optimizer = self.adversary_optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            out = self.model.loss_fn.adversary_loss(self.model, Batch(x, target, draws, progress))
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        return {ADVERSARY + name: value.detach() for name, value in out.terms.items()}

    @torch.no_grad()
    def evaluate(self, data: ImageData, noise: NoiseTransform | None = None) -> dict[str, float]:
        """Mean loss terms and reconstruction MSE (from the posterior mean) on ``data``.

        With ``noise`` (default: the training noise) the PSNR of the noisy inputs and of the model's
        outputs against the clean images are added.
        """
        model = self.model
        model.eval()
        noise = noise or self.noise
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 2 + self.rank)
        draws = torch.Generator(device=self.device).manual_seed(self.config.seed + 3 + self.rank)
        images = data.images[self.rank :: self.world]  # each process scores its shard; sums are reduced
        if self.config.binarize:  # a model trained on binary images is scored on one fixed binarisation
            images = binarize(images, self.config.seed)
        sums: dict[str, float] = {}
        for start in range(0, len(images), self.config.eval_batch_size):
            clean = images[start : start + self.config.eval_batch_size].to(self.device)
            k = clean.shape[0]
            with self.autocast():
                terms = model.loss(clean, generator=draws).terms
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
        names = sorted(sums)
        totals = distributed.all_reduce_sum(torch.tensor([sums[k] for k in names], dtype=torch.float64))
        result = {name: value.item() / len(data) for name, value in zip(names, totals, strict=True)}
        result["loss"] = sum(v for k, v in result.items() if k not in ("mse", "psnr_noisy", "psnr_denoised"))
        return result


class _LossModule(nn.Module):
    """The model's loss as a module, so that DistributedDataParallel (and torch.compile) can wrap it."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model.loss(x, target, generator=generator, progress=progress)
        return out.total, out.terms


class _NonFiniteGuard:
    """Keeps non-finite steps out of the weights without waiting for the device every step.

    Each step's loss and gradient norm are checked on the device; the flag is handed to fused Adam
    (``found_inf``, as ``GradScaler`` does), which then leaves weights and moments untouched. The first bad
    step is remembered on the device and reported by ``raise_if_tripped``, which training calls every
    ``Trainer.sync_every`` steps and at the end of the epoch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, epoch: int) -> None:
        self.optimizer, self.epoch = optimizer, epoch
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_values = torch.zeros(2, device=device)  # loss and gradient norm at the first bad step

    def check(self, step: int, loss: torch.Tensor) -> None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        values = torch.stack([loss.detach().float(), norm.float()])
        # Losses differ between processes: summed, a non-finite one is seen by all, which skip and stop together.
        values = distributed.all_reduce_sum(values)
        bad = (~torch.isfinite(values)).any()
        self.optimizer.found_inf = bad.float()
        new = bad & (self.first_bad < 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_values = torch.where(new, values, self.bad_values)

    def __enter__(self) -> _NonFiniteGuard:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.optimizer.__dict__.pop("found_inf", None)  # a later step outside training must not see a stale flag
        if kind is None:
            self.raise_if_tripped()

    def raise_if_tripped(self) -> None:
        step = int(self.first_bad.item())
        if step < 0:
            return
        loss, norm = self.bad_values.tolist()
        what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient became {norm}"
        where = f"at epoch {self.epoch}, step {step + 1}"
        raise TrainingError(f"{what} {where}; lower --lr or check the data for NaN/inf values")


def _check_optimizer_state(saved: Any, own: dict[str, Any], params: list[torch.Tensor]) -> None:
    """Raise ``ValueError`` unless ``saved`` is this optimizer's kind of state, for these parameters."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ValueError("the optimizer state is not a dict with a state")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(own["param_groups"]):
        raise ValueError("the optimizer state has other parameter groups")
    for group, mine in zip(groups, own["param_groups"], strict=True):
        if not isinstance(group, dict) or set(group) != set(mine) or group["params"] != mine["params"]:
            raise ValueError("the optimizer state is another optimizer's or for other parameters")
        for key, value in mine.items():
            given = group[key]
            if isinstance(value, bool) or value is None:
                ok = given is None or isinstance(given, bool)
            elif isinstance(value, (int, float)):
                ok = isinstance(given, (int, float)) and not isinstance(given, bool) and math.isfinite(given)
            elif isinstance(value, (tuple, list)):
                ok = isinstance(given, (tuple, list)) and len(given) == len(value)
                ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in given)
            else:
                ok = True
            if not ok:
                raise ValueError(f"the optimizer's {key} is {given!r}")
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise ValueError("the optimizer state names a parameter this model does not have")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(f"the optimizer's {key} of parameter {index} is not a float tensor")
            want = () if key == "step" else tuple(params[index].shape)
            if tuple(value.shape) != want:
                raise ValueError(
                    f"the optimizer's {key} of parameter {index} is shaped {tuple(value.shape)}, not {want}"
                )
