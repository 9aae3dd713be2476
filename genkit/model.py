"""A model is a composition of an Encoder, a Decoder, a Prior and a Loss; a preset names such a composition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genkit.config import ModelConfig
from genkit.errors import PluginError, ShapeError
from genkit.losses import LikelihoodConfig, likelihood_images, likelihood_of
from genkit.parts import Batch, Decoder, Encoder, Loss, LossOutput, ModelOutput, Posterior, Prior

PART_KINDS = ("encoder", "decoder", "prior", "loss")


def doc_summary(obj: Any) -> str:
    """The first line of ``obj``'s docstring; "" when it has none (or a plugin set ``__doc__`` to a non-string)."""
    doc = getattr(obj, "__doc__", None)
    doc = doc.strip() if isinstance(doc, str) else ""
    return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class Preset:
    """A model registered as a named composition of parts (by registry name) with default options.

    ``options`` maps ``"model"`` and each part kind to default option values, e.g.
    ``{"model": {"latent": 10}, "encoder": {"head": "gaussian"}, "loss": {"beta": 4.0}}``. A part's defaults
    apply to whichever part of that kind is chosen, where it has the option.
    """

    description: str
    encoder: str
    decoder: str
    prior: str
    loss: str
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def parts(self) -> dict[str, str]:
        return {kind: getattr(self, kind) for kind in PART_KINDS}


class Model(nn.Module):
    """Base of every genkit model: four parts and what is done with them (encode, decode, sample, loss).

    Presets build a ``Model`` from registered parts. A whole-model plugin subclasses it, declares its
    ``config_class`` and builds its parts in ``__init__(config)``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: the registry name the model was built under (set by ``genkit.get_model``).
    name: str = ""
    #: the plugin that provides it, as ``distribution[name]`` (set by ``genkit.get_model``), for error messages.
    plugin: str = ""
    #: a preset's one-line description (a subclass's is the first line of its docstring).
    description: str = ""

    def __init__(self, config: ModelConfig, *, encoder: Encoder, decoder: Decoder, prior: Prior, loss: Loss) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.loss_fn = loss

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "prior" and isinstance(value, Prior):
            value.attach(self)  # e.g. a VampPrior reads the model's encoder

    @classmethod
    def describe(cls) -> str:
        """The first line of the model's docstring."""
        return doc_summary(cls)

    def part(self, kind: str) -> nn.Module:
        """The part of ``kind`` (encoder, decoder, prior or loss)."""
        return self.loss_fn if kind == "loss" else getattr(self, kind)

    def check_parts(self) -> None:
        """Raise ``ConfigError`` naming both parts if two of the parts cannot work together."""
        for kind in PART_KINDS:
            part = self.part(kind)
            if hasattr(part, "check"):
                part.check(self)

    @torch.no_grad()
    def posterior_has_density(self) -> bool:
        """Whether the encoder's posterior has a density (probed on two blank images)."""
        training = self.training
        self.eval()
        try:
            x = torch.zeros(2, *self.input_shape, device=self.device)
            return bool(self.encoder(x).has_density)
        finally:
            self.train(training)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model takes."""
        c = self.config
        return (c.image_channels, c.image_size, c.image_size)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def check_input(self, x: Tensor) -> None:
        """Raise ``ShapeError`` unless ``x`` is a batch of images of the configured size."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            want = "(N, {}, {}, {})".format(*self.input_shape)
            raise ShapeError(
                f"{self.name or type(self).__name__} expects images shaped {want}, got {tuple(x.shape)}: "
                "resize the images or build the model with matching image_size/image_channels"
            )

    def encode(self, x: Tensor) -> Posterior:
        """The posterior q(z|x) (or the code, for a deterministic encoder)."""
        self.check_input(x)
        return self.encoder(x)

    @property
    def likelihood(self) -> LikelihoodConfig:
        """How the loss reads the decoder's logits as p(x|z) (its likelihood options; Bernoulli by default)."""
        return likelihood_of(self.loss_fn.config)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's logits for ``z``, checked to have the input shape (times the likelihood's outputs per
        pixel: channels x 2 when the decoder also predicts each pixel's scale)."""
        logits = self.decoder(z)
        c, h, w = self.input_shape
        outputs = self.likelihood.outputs
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (z.shape[0], c * outputs, h, w):
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else f"a {type(logits).__name__}"
            why = "" if outputs == 1 else " (scale=decoded needs two outputs per pixel)"
            raise PluginError(
                f"{self.plugin or self.name or type(self).__name__}: decoder returned {got}, "
                f"expected ({z.shape[0]}, {c * outputs}, {h}, {w}){why}; fix the decoder"
            )
        return logits

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1] from latent codes (as the loss's likelihood reads the decoder's logits)."""
        return likelihood_images(self.decode_logits(z), self.likelihood)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        """Encode, draw z (the posterior mean in eval mode) and decode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if self.training else posterior.mean
        return ModelOutput(posterior, z, self.decode_logits(z))

    def loss(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: float | None = None,
    ) -> LossOutput:
        """The loss terms for inputs ``x`` against ``target`` (``x`` itself unless denoising)."""
        return self.loss_fn(self, Batch(x, x if target is None else target, generator, progress))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of ``x``."""
        return self.decode(self.encode(x).mean)

    @torch.no_grad()
    def codes(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """Posterior means of ``images`` (on any device), computed in batches on the model's device."""
        device = self.device
        return torch.cat(
            [self.encode(images[i : i + batch_size].to(device)).mean.float() for i in range(0, len(images), batch_size)]
        )

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images drawn from the prior."""
        return self.decode(self.prior.sample(n, generator))
