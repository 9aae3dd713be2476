"""The four parts of a model — Encoder, Decoder, Prior, Loss — and the typed values they pass.

Every part is an ``nn.Module`` built as ``cls(config, dims)``: ``config`` is an instance of the part's
``config_class`` (its options) and ``dims`` the model's ``ModelConfig`` (latent size, image shape). Parts are
registered in the entry-point groups ``genkit.encoders``, ``genkit.decoders``, ``genkit.priors`` and
``genkit.losses`` and chosen by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from genkit.config import Config, ModelConfig
from genkit.errors import ConfigError

if TYPE_CHECKING:
    from genkit.model import Model


@dataclass
class Posterior:
    """What an encoder returns: a code (``logvar is None``) or a diagonal Gaussian q(z|x).

    Subclass it for other code types (e.g. a categorical or vector-quantised code): ``mean`` is the code that
    reconstructions and plots use; override ``sample``, ``log_prob`` and ``has_density``.
    """

    mean: Tensor
    logvar: Tensor | None = None

    @property
    def deterministic(self) -> bool:
        return self.logvar is None

    @property
    def has_density(self) -> bool:
        """Whether ``log_prob`` is defined (needed by KL and importance-weighted losses)."""
        return self.logvar is not None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z = mean + sigma * eps (the mean itself for a deterministic code)."""
        return self.sample_n(1, generator)[0]

    def sample_n(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` reparameterised draws, shaped (k, *mean.shape)."""
        if self.logvar is None:
            return self.mean.expand(k, *self.mean.shape)
        shape = (k, *self.mean.shape)
        eps = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over the last (latent) dimension; ``z`` may carry leading sample dimensions."""
        if self.logvar is None:
            raise ValueError("a deterministic code has no density")
        return -0.5 * (((z - self.mean) ** 2) / self.logvar.exp() + self.logvar + math.log(2 * math.pi)).sum(-1)


@dataclass
class ModelOutput:
    """One forward pass: the posterior, the latent draw and the decoder's logits."""

    posterior: Posterior
    z: Tensor
    logits: Tensor


@dataclass
class Batch:
    """What a loss scores: the model's input, the clean target, the run's generator and the training progress.

    ``generator`` is seeded by the trainer for every epoch, so a loss's own draws (posterior samples, prior
    samples) repeat exactly on resume. ``progress`` is the number of epochs done (fractional), for term-weight
    schedules such as KL warm-up; ``None`` outside training, where schedules take their final value.
    """

    x: Tensor
    target: Tensor
    generator: torch.Generator | None = None
    progress: float | None = None


class LossOutput:
    """Named loss terms (scalars, batch means) and the total that training minimises.

    The total is the sum of the terms unless a loss gives it (e.g. with a warm-up weight on one term).
    """

    def __init__(self, terms: dict[str, Tensor], total: Tensor | None = None) -> None:
        self.terms = terms
        self._total = total

    @property
    def total(self) -> Tensor:
        if self._total is not None:
            return self._total
        return sum(self.terms.values())  # type: ignore[return-value]


class Part(nn.Module):
    """Base of the four part kinds: options in ``config`` (a ``config_class``), sizes in ``dims``.

    ``name`` is the registry name the part was built under (set by genkit, empty for unregistered parts).
    """

    config_class: ClassVar[type[Config]] = Config
    kind: ClassVar[str] = "part"

    def __init__(self, config: Config | None = None, dims: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.config_class()
        self.dims = dims if dims is not None else ModelConfig()
        self.name = ""

    def label(self) -> str:
        """``kind name`` for messages, e.g. ``loss iwae``."""
        return f"{self.kind} {self.name or type(self).__name__}"

    def check(self, model: Model) -> None:
        """Raise ``ConfigError`` (naming both parts) if this part cannot work with ``model``'s other parts."""


class Encoder(Part):
    """x (N, C, H, W) in [0, 1] -> ``Posterior`` over a latent of size ``dims.latent``."""

    kind = "encoder"

    def forward(self, x: Tensor) -> Posterior:  # pragma: no cover - abstract
        """Encode a batch of images into their posterior (or deterministic code)."""
        raise NotImplementedError


class Decoder(Part):
    """z (N, latent) -> logits (N, C, H, W); the loss's likelihood reads them as the reconstruction in [0, 1]
    (``sigmoid(logits)`` under the default Bernoulli likelihood)."""

    kind = "decoder"

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Decode latent codes into logits shaped like the images."""
        raise NotImplementedError


class Prior(Part):
    """p(z): draws latent codes and scores them.

    A prior's parameters train with the model (they are in its optimizer and its saved weights). A prior with
    ``fitted_after_training = True`` instead has no usable density until ``fit`` is called on the training
    codes (ex-post density estimation, e.g. ``gmm``); ``genkit run`` fits it after the last epoch.
    """

    kind = "prior"
    fitted_after_training: ClassVar[bool] = False
    #: False for a prior that only samples (e.g. a diffusion model): ``log_prob`` raises NotImplementedError,
    #: and losses and likelihoods that need log p(z) refuse it
    has_density: ClassVar[bool] = True

    def __init__(self, config: Config | int | None = None, dims: ModelConfig | None = None) -> None:
        if isinstance(config, int) and not isinstance(config, bool):  # Prior(latent), the short form
            config, dims = None, ModelConfig(latent=config)
        super().__init__(config, dims)  # type: ignore[arg-type]
        # A buffer so that ``.to(device)`` moves the prior and samples land on the model's device.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def latent(self) -> int:
        return self.dims.latent

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def attach(self, model: Model) -> None:
        """Called when the prior is installed on ``model`` (a prior built from the encoder keeps a reference)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """``n`` latent codes (n, latent) on the prior's device."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover
        """log p(z), one value per code (z: (..., latent))."""
        raise NotImplementedError

    def kl(self, posterior: Posterior, z: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) per sample: the one-draw estimate log q(z) - log p(z) at the posterior draw ``z``,
        unless a prior has a closed form."""
        return posterior.log_prob(z) - self.log_prob(z)

    def fit(self, codes: Tensor) -> None:
        """Fit the prior to latent codes after training (ex-post density estimation); a no-op by default."""


class Loss(Part):
    """Scores a batch: ``forward(model, batch) -> LossOutput``.

    A loss runs the model's parts itself (``model.encode``, ``model.decode_logits``, ``model.prior``), so it can
    draw several posterior samples, prior samples, or use a learned prior. Draw randomness only from
    ``batch.generator``. Override ``check`` to refuse parts it cannot train.
    """

    kind = "loss"

    def forward(self, model: Model, batch: Batch) -> LossOutput:  # pragma: no cover - abstract
        """The named loss terms of ``batch`` under ``model``."""
        raise NotImplementedError

    def adversary(self) -> nn.Module | None:
        """A network trained against the model with its own optimizer (e.g. a discriminator), or ``None``.

        The trainer leaves its parameters out of the model's optimizer and, after each model step, steps a
        second Adam (same learning rate and schedule) on ``adversary_loss``. Its terms are logged as
        ``adversary_NAME`` and are not part of the model's loss.
        """
        return None

    def adversary_loss(self, model: Model, batch: Batch) -> LossOutput:  # pragma: no cover - abstract
        """The adversary's loss terms on ``batch``; use the model's outputs detached (only the adversary learns)."""
        raise NotImplementedError


def require_density(part: Part, model: Model, why: str) -> None:
    """Raise ``ConfigError`` unless ``model``'s encoder gives a posterior with a density (``why`` says what for)."""
    if not model.posterior_has_density():
        raise ConfigError(
            f"{part.label()} cannot work with {model.encoder.label()}: {why} needs a posterior density, "
            "but this encoder gives a point code; choose a Gaussian encoder (--set encoder.head=gaussian) "
            "or another " + part.kind
        )


def require_trained_prior(part: Part, model: Model) -> None:
    """Raise ``ConfigError`` if ``model``'s prior is only fitted after training (so training cannot use it)."""
    if model.prior.fitted_after_training:
        raise ConfigError(
            f"{part.label()} cannot train with {model.prior.label()}: that prior is fitted to the codes after "
            "training, so it has no density or samples during it; train with another --prior (e.g. normal) and "
            f"sample with genkit sample RUN --prior {model.prior.name or 'NAME'}"
        )
