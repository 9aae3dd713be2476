"""A denoising-diffusion prior over latent codes, fitted after training (``diffusion`` in ``genkit.priors``).

The latent-diffusion idea: the autoencoder does the heavy lifting, and a small diffusion model learns the
distribution of its codes. It is fitted like ``gmm`` (``genkit run MODEL --prior diffusion`` after the last
epoch, or ``genkit sample RUN --prior diffusion``), so every model can use it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from genkit import Config, ConfigError, ModelConfig, Prior, ShapeError, option


@dataclass
class DiffusionConfig(Config):
    timesteps: int = option(1000, "diffusion steps T of the forward (noising) process, cosine schedule")
    sample_steps: int = option(100, "denoising steps when sampling (DDIM: fewer is faster, coarser)")
    eta: float = option(1.0, "sampling noise: 0 is deterministic DDIM, 1 the DDPM-like sampler")
    hidden: int = option(256, "width of the noise-prediction MLP")
    layers: int = option(3, "residual blocks of the MLP")
    train_steps: int = option(4000, "Adam steps of fitting")
    batch_size: int = option(512, "codes per fitting step")
    lr: float = option(1e-3, "Adam's learning rate (cosine-decayed over the fitting)")
    seed: int = option(0, "seed of the fitting and of the initial weights")

    positive: ClassVar[tuple[str, ...]] = ("timesteps", "sample_steps", "hidden", "layers", "train_steps",
                                           "batch_size", "lr")  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if self.sample_steps > self.timesteps:
            raise ConfigError(f"sample_steps ({self.sample_steps}) must be <= timesteps ({self.timesteps})")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"eta must be between 0 and 1, got {self.eta}")


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class _NoiseNet(nn.Module):
    """eps(x_t, t): an MLP with a sinusoidal embedding of t added to its input projection."""

    def __init__(self, latent: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(latent, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.Sequential(*(_Block(hidden) for _ in range(layers)))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, latent))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        half = self.hidden // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=x.device) / half)
        angles = t.float()[:, None] * freqs[None]
        embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
        if embedding.shape[1] < self.hidden:  # an odd width
            embedding = nn.functional.pad(embedding, (0, 1))
        return self.out(self.blocks(self.inp(x) + self.time(embedding)))


class DiffusionPrior(Prior):
    """Denoising-diffusion model of the training codes (DDPM training, DDIM sampling): fitted after training.

    The codes are standardised, noised along a cosine schedule of ``timesteps`` steps, and an MLP learns to
    predict the noise. Sampling runs ``sample_steps`` DDIM steps from N(0, I). There is no density
    (``log_prob``): sample with it; score likelihoods with a prior that has one.
    """

    config_class = DiffusionConfig
    fitted_after_training = True
    has_density = False

    def __init__(self, config: DiffusionConfig | None = None, dims: ModelConfig | None = None, **options: Any) -> None:
        if config is None:
            config = DiffusionConfig.from_dict(options, owner="prior diffusion")
        super().__init__(config, dims)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)  # the same initial network for the same seed
        self.net = _NoiseNet(self.latent, config.hidden, config.layers)
        torch.random.set_rng_state(generator_state)
        self.net.requires_grad_(False)  # fitted by `fit`, never by the model's optimizer
        self.register_buffer("shift", torch.zeros(self.latent))
        self.register_buffer("scale", torch.ones(self.latent))
        self.register_buffer("bound", torch.full((self.latent,), 5.0))  # of the standardised codes
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _alpha_bar(self, t: Tensor) -> Tensor:
        """Signal fraction at step ``t`` (0..T, float): the cosine schedule of Nichol & Dhariwal (2021)."""
        s = 0.008
        f = torch.cos((t / self.config.timesteps + s) / (1 + s) * math.pi / 2) ** 2
        return (f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp(1e-5, 1.0)

    def fit(self, codes: Tensor) -> None:
        """Train the noise-prediction network on ``codes`` (N, latent)."""
        c = self.config
        if codes.dim() != 2 or codes.shape[1] != self.latent:
            raise ShapeError(f"diffusion prior: codes must be (N, {self.latent}), got {tuple(codes.shape)}")
        if codes.shape[0] < 2 or not torch.isfinite(codes).all():
            raise ShapeError("diffusion prior: needs at least 2 finite codes to fit")
        codes = codes.to(self.device).float()
        self.shift.copy_(codes.mean(0))
        self.scale.copy_(codes.std(0).clamp_min(1e-6))
        x0_all = (codes - self.shift) / self.scale
        self.bound.copy_(x0_all.abs().amax(0) * 1.05)
        generator = torch.Generator(device=self.device).manual_seed(c.seed)
        self.net.requires_grad_(True)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, c.train_steps)
        self.net.train()
        bar = tqdm(range(c.train_steps), desc="fitting diffusion prior", leave=False, disable=None)
        for _ in bar:
            index = torch.randint(len(x0_all), (c.batch_size,), generator=generator, device=self.device)
            x0 = x0_all[index]
            t = torch.randint(1, c.timesteps + 1, (c.batch_size,), generator=generator, device=self.device)
            noise = torch.randn(x0.shape, generator=generator, device=self.device)
            a = self._alpha_bar(t.float())[:, None]
            loss = (self.net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t) - noise).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        self.net.requires_grad_(False)
        self.net.eval()
        self.fitted.fill_(True)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if not bool(self.fitted):
            raise ConfigError(
                "the diffusion prior is not fitted: fit it to training codes first (genkit sample RUN --prior "
                "diffusion, or genkit.priors.fit_prior(model, 'diffusion', train_images))"
            )
        c = self.config
        x = torch.randn(n, self.latent, generator=generator, device=self.device)
        steps = torch.linspace(c.timesteps, 0, c.sample_steps + 1, device=self.device).round()
        one = torch.ones((), device=self.device)
        for t, t_prev in itertools.pairwise(steps):
            a, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev) if t_prev > 0 else one
            eps = self.net(x, t.expand(n))
            # the clean-code estimate, kept within the range of the training codes (near t = T a small error in
            # eps is divided by sqrt(a) ~ 0.003), and eps made consistent with it, as image diffusion clips to [-1, 1]
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-self.bound, self.bound)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            sigma = c.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp_min(0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if t_prev > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=self.device)
        return x * self.scale + self.shift

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError("a diffusion prior has no tractable density")
