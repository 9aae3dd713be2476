"""Conformance checks any model plugin can run: subclass ``ModelConformance`` in your tests.

    from genkit.testing import ModelConformance

    class TestMyModel(ModelConformance):
        model_name = "my-model"

Each ``check_*`` function is also usable on its own, e.g. parametrised over ``genkit.list_models``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from genkit.model import Model
from genkit.registry import get_model


def _batch(model: Model, n: int = 4) -> torch.Tensor:
    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(0))


def check_shapes(model: Model) -> None:
    """encode -> latent of the configured size; decode/reconstruct -> images in [0, 1] of the input shape."""
    x = _batch(model)
    posterior = model.encode(x)
    assert posterior.mean.shape == (4, model.config.latent), f"latent shape {tuple(posterior.mean.shape)}"
    if posterior.logvar is not None:
        assert posterior.logvar.shape == posterior.mean.shape, "logvar and mean shapes differ"
    recon = model.reconstruct(x)
    assert recon.shape == x.shape, f"reconstruction shape {tuple(recon.shape)} != input {tuple(x.shape)}"
    assert recon.min() >= 0 and recon.max() <= 1, "reconstructions must lie in [0, 1]"


def check_finite_loss(model: Model) -> None:
    """The loss has named finite scalar terms, and the total is their sum."""
    out = model.loss(_batch(model))
    assert out.terms, "the loss returned no terms"
    for name, value in out.terms.items():
        assert value.dim() == 0, f"loss term {name!r} is not a scalar"
        assert torch.isfinite(value), f"loss term {name!r} is not finite"
    assert torch.allclose(out.total, sum(out.terms.values())), "total != sum of terms"


def check_gradients_flow(model: Model) -> None:
    """Every trainable parameter of encoder and decoder gets a finite, non-zero-somewhere gradient."""
    model.zero_grad(set_to_none=True)
    model.loss(_batch(model)).total.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("prior."):
            continue
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None), "all gradients are zero"


def check_sample_shape(model: Model) -> None:
    """``sample(n)`` returns n images of the input shape in [0, 1]."""
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, *model.input_shape), f"sample shape {tuple(samples.shape)}"
    assert samples.min() >= 0 and samples.max() <= 1, "samples must lie in [0, 1]"


def check_config_round_trip(model: Model) -> None:
    """config -> dict -> config gives the same config, and rebuilding gives same-shaped parameters."""
    config = type(model.config).from_dict(model.config.to_dict())
    assert config == model.config, "config round trip changed the config"
    rebuilt = type(model)(config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}, "rebuilt model differs"


CHECKS = (check_shapes, check_finite_loss, check_gradients_flow, check_sample_shape, check_config_round_trip)


class ModelConformance:
    """Inherit in a pytest module and set ``model_name`` (and ``overrides`` if needed)."""

    model_name: str = ""
    overrides: ClassVar[dict[str, Any]] = {}

    def build(self) -> Model:
        torch.manual_seed(0)
        model = get_model(self.model_name, **self.overrides)
        model.train()
        return model

    def test_shapes(self) -> None:
        check_shapes(self.build())

    def test_finite_loss(self) -> None:
        check_finite_loss(self.build())

    def test_gradients_flow(self) -> None:
        check_gradients_flow(self.build())

    def test_sample_shape(self) -> None:
        check_sample_shape(self.build())

    def test_config_round_trip(self) -> None:
        check_config_round_trip(self.build())
