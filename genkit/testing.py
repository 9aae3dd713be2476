"""Conformance checks any plugin can run: subclass ``ModelConformance`` for a whole model, or
``EncoderConformance``, ``DecoderConformance``, ``PriorConformance`` or ``LossConformance`` for one part.

    from genkit.testing import ModelConformance, PriorConformance

    class TestMyModel(ModelConformance):
        model_name = "my-model"

    class TestMyPrior(PriorConformance):
        part_name = "my-prior"
        options: ClassVar[dict] = {"components": 4}

Each ``check_*`` function is also usable on its own, e.g. parametrised over ``genkit.list_models`` or
``genkit.registry.priors.names()``; the part checks take the part's registry name and options.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import torch

from genkit.config import ModelConfig
from genkit.errors import ConfigError
from genkit.model import Model
from genkit.parts import LossOutput, Posterior, Prior
from genkit.registry import build_part, get_model


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
    """``sample(n)`` returns n images of the input shape in [0, 1] (an ex-post prior is fitted first, as
    ``genkit run`` does after training)."""
    if model.prior.fitted_after_training:
        images = torch.rand(64, *model.input_shape, generator=torch.Generator().manual_seed(0))
        model.prior.fit(model.codes(images.to(model.device)))
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, *model.input_shape), f"sample shape {tuple(samples.shape)}"
    assert samples.min() >= 0 and samples.max() <= 1, "samples must lie in [0, 1]"


def check_config_round_trip(model: Model) -> None:
    """The run config (as written to config.json) rebuilds the same composition with same-shaped parameters."""
    import json
    from pathlib import Path

    from genkit.checkpoint import build_model_from_config, model_parts, run_config

    config = type(model.config).from_dict(model.config.to_dict())
    assert config == model.config, "config round trip changed the config"
    rebuilt = build_model_from_config(json.loads(json.dumps(run_config(model))), Path("config.json"), check=False)
    assert model_parts(rebuilt) == model_parts(model), "rebuilt model has other parts or part options"
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}, "rebuilt model differs"


def check_finite_state(model: Model) -> None:
    """Every float parameter and buffer is finite (genkit run stops a run whose weights are not)."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    assert not bad, f"non-finite values in a freshly built model: {bad[0]} (use a finite placeholder until fitted)"


CHECKS = (
    check_shapes,
    check_finite_loss,
    check_gradients_flow,
    check_sample_shape,
    check_config_round_trip,
    check_finite_state,
)


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


# ---------------------------------------------------------------------------------------------------------------
# Part conformance: each check takes a part's registry name and options.

#: latent size of the parts and models the part checks build
LATENT = 6
#: latent sizes tried, in order, for encoders and decoders that refuse LATENT (a code grid of 1 channel on 4x4, 7x7
#: or 8x8 positions: 16-, 28- and 32-pixel images)
GRID_LATENTS = (16, 49, 64)
#: image shapes tried, in order, as the second shape encoders and decoders must support (besides 28x28x1)
OTHER_DIMS = (
    ModelConfig(latent=LATENT, image_size=32, image_channels=3),
    ModelConfig(latent=LATENT, image_size=16),
    ModelConfig(latent=LATENT, image_size=64),
)
#: small conv nets for the models that prior and loss checks compose (tests stay fast)
SMALL_NETS = {
    "latent": LATENT,
    "encoder.channels": 8,
    "encoder.hidden": 32,
    "decoder.channels": 8,
    "decoder.hidden": 32,
}
#: presets tried, in order, to compose a model around a prior or a loss
HOST_MODELS = ("vae-conv", "ae", "vq-vae", "compressor")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(dims: ModelConfig, n: int = 4) -> torch.Tensor:
    return torch.rand(n, dims.image_channels, dims.image_size, dims.image_size, generator=_seeded(0))


def _build(kind: str, name: str, options: dict[str, Any] | None, dims: ModelConfig) -> Any:
    torch.manual_seed(0)
    return build_part(kind, name, dict(options or {}), dims)


def _dims(kind: str, name: str, options: dict[str, Any] | None, image: ModelConfig | None = None) -> ModelConfig:
    """The shape of ``image`` (default 28x28x1) with LATENT, or else the first of ``GRID_LATENTS`` the part
    builds for; ConfigError if none."""
    image = image or ModelConfig(latent=LATENT)
    error = None
    for latent in (LATENT, *GRID_LATENTS):
        dims = dataclasses.replace(image, latent=latent)
        try:
            build_part(kind, name, dict(options or {}), dims)
        except ConfigError as exc:
            error = error or exc
            continue
        return dims
    raise error


def _two_dims(kind: str, name: str, options: dict[str, Any] | None) -> list[ModelConfig]:
    """28x28 grayscale and the first of ``OTHER_DIMS`` the part builds for."""
    for image in OTHER_DIMS:
        try:
            return [_dims(kind, name, options), _dims(kind, name, options, image)]
        except ConfigError:
            continue
    raise AssertionError(f"{kind} {name} builds for none of the image shapes {OTHER_DIMS}")


def _host_model(kind: str, name: str, options: dict[str, Any] | None) -> Model:
    """A small model of the first of ``HOST_MODELS`` that accepts the part (its ConfigError if none does)."""
    error: ConfigError | None = None
    for preset in HOST_MODELS:
        try:
            torch.manual_seed(0)
            model = get_model(
                preset, **{kind: name}, **SMALL_NETS, **{f"{kind}.{k}": v for k, v in (options or {}).items()}
            )
        except ConfigError as exc:
            error = exc
            continue
        return model.train()
    assert error is not None
    raise error


def _assert_gradients(module: torch.nn.Module, what: str, every: bool = True) -> None:
    """Every trainable parameter has a finite gradient (non-zero somewhere: in each one with ``every``)."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    for n, p in params:
        assert p.grad is not None, f"no gradient reaches {what} parameter {n}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {what} parameter {n}"
        assert not every or p.grad.abs().sum() > 0, f"zero gradient in {what} parameter {n}"
    assert not params or any(p.grad.abs().sum() > 0 for _, p in params), f"all gradients of {what} are zero"


def check_options_round_trip(kind: str, name: str, options: dict[str, Any] | None = None) -> None:
    """The part keeps its options; its config survives to_dict -> JSON -> from_dict and rebuilds the same part."""
    dims = _dims(kind, name, options) if kind in ("encoder", "decoder") else ModelConfig(latent=LATENT)
    part = _build(kind, name, options, dims)
    assert part.name == name, f"part built as {name!r} is named {part.name!r}"
    data = json.loads(json.dumps(part.config.to_dict()))
    for key, value in (options or {}).items():
        assert data[key] == value, f"option {key}={value!r} became {data[key]!r}"
    assert type(part.config).from_dict(data) == part.config, "config round trip changed the config"
    rebuilt = _build(kind, name, data, dims)
    shapes = {k: v.shape for k, v in part.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}, "rebuilt part has other tensors"


# -- encoders ---------------------------------------------------------------------------------------------------


def check_encoder_posterior(name: str, options: dict[str, Any] | None = None) -> None:
    """A ``Posterior`` with finite mean (N, latent) and logvar None or alike, at 28x28x1 and another shape."""
    for dims in _two_dims("encoder", name, options):
        posterior = _build("encoder", name, options, dims)(_images(dims))
        assert isinstance(posterior, Posterior), f"encoder returned a {type(posterior).__name__}, not a Posterior"
        assert posterior.mean.shape == (4, dims.latent), f"mean shape {tuple(posterior.mean.shape)} for {dims}"
        assert torch.isfinite(posterior.mean).all(), "non-finite posterior mean"
        if posterior.logvar is not None:
            assert posterior.logvar.shape == posterior.mean.shape, "logvar and mean shapes differ"
            assert torch.isfinite(posterior.logvar).all(), "non-finite posterior logvar"


def check_encoder_sampling(name: str, options: dict[str, Any] | None = None) -> None:
    """Posterior draws have the latent's shape and repeat for a seed; log_prob is (k, N) and finite if defined."""
    dims = _dims("encoder", name, options)
    posterior = _build("encoder", name, options, dims)(_images(dims))
    z = posterior.sample(_seeded(1))
    assert z.shape == (4, dims.latent), f"sample shape {tuple(z.shape)}"
    assert torch.equal(z, posterior.sample(_seeded(1))), "the same seed gave other draws"
    zs = posterior.sample_n(3, _seeded(1))
    assert zs.shape == (3, 4, dims.latent), f"sample_n(3) shape {tuple(zs.shape)}"
    if posterior.has_density:
        log_q = posterior.log_prob(zs)
        assert log_q.shape == (3, 4), f"log_prob shape {tuple(log_q.shape)}, expected (3, 4)"
        assert torch.isfinite(log_q).all(), "non-finite posterior log_prob"


def check_encoder_gradients(name: str, options: dict[str, Any] | None = None) -> None:
    """Gradients of the posterior (mean, logvar and any other float tensor a posterior subclass carries, such as a
    quantised code) reach every encoder parameter."""
    dims = _dims("encoder", name, options)
    encoder = _build("encoder", name, options, dims)
    posterior = encoder(_images(dims))
    tensors = [v for f in dataclasses.fields(posterior) if isinstance(v := getattr(posterior, f.name), torch.Tensor)]
    out = sum(
        (t * torch.randn(t.shape, generator=_seeded(2 + i))).sum()
        for i, t in enumerate(tensors)
        if t.is_floating_point() and t.requires_grad
    )
    out.backward()
    _assert_gradients(encoder, f"encoder {name}")


# -- decoders ---------------------------------------------------------------------------------------------------


def check_decoder_shapes(name: str, options: dict[str, Any] | None = None) -> None:
    """Finite logits (N, C, H, W) at 28x28x1 and another image shape."""
    for dims in _two_dims("decoder", name, options):
        logits = _build("decoder", name, options, dims)(torch.randn(3, dims.latent, generator=_seeded(1)))
        want = (3, dims.image_channels, dims.image_size, dims.image_size)
        assert isinstance(logits, torch.Tensor), f"decoder returned a {type(logits).__name__}, not a Tensor"
        assert logits.shape == want, f"logits shape {tuple(logits.shape)}, expected {want}"
        assert torch.isfinite(logits).all(), "non-finite logits"


def check_decoder_gradients(name: str, options: dict[str, Any] | None = None) -> None:
    """Gradients of the logits reach every decoder parameter and the latent codes."""
    dims = _dims("decoder", name, options)
    decoder = _build("decoder", name, options, dims)
    z = torch.randn(3, dims.latent, generator=_seeded(1)).requires_grad_()
    logits = decoder(z)
    (logits * torch.randn(logits.shape, generator=_seeded(2))).sum().backward()
    _assert_gradients(decoder, f"decoder {name}")
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, "no gradient reaches z"


# -- priors -----------------------------------------------------------------------------------------------------


def _codes(n: int = 200) -> torch.Tensor:
    """Synthetic latent codes in two clusters, to fit ex-post priors on."""
    g = _seeded(4)
    return torch.cat([torch.randn(n // 2, LATENT, generator=g) - 2, 0.5 * torch.randn(n - n // 2, LATENT, generator=g)])


def _ready_prior(name: str, options: dict[str, Any] | None) -> tuple[Prior, Model | None]:
    """The prior, fitted on ``_codes`` if it is ex-post, inside a model if it needs one for ``log_prob``."""
    prior, model = _build("prior", name, options, ModelConfig(latent=LATENT)), None
    if prior.fitted_after_training:
        prior.fit(_codes())
    try:
        if prior.has_density:
            prior.log_prob(torch.zeros(2, LATENT))
    except ConfigError:  # e.g. the vamp prior encodes its pseudo-inputs with the model's encoder
        model = _host_model("prior", name, options)
        prior = model.prior
        if prior.fitted_after_training:
            prior.fit(_codes())
    return prior, model


def check_prior_sample(name: str, options: dict[str, Any] | None = None) -> None:
    """``sample(n, generator)`` is (n, latent), finite, repeats for a seed and differs between seeds."""
    prior, _model = _ready_prior(name, options)
    z = prior.sample(5, _seeded(1))
    assert z.shape == (5, LATENT), f"sample shape {tuple(z.shape)}, expected (5, {LATENT})"
    assert torch.isfinite(z).all(), "non-finite samples"
    assert torch.equal(z, prior.sample(5, _seeded(1))), "the same seed gave other samples"
    assert not torch.equal(z, prior.sample(5, _seeded(2))), "other seeds gave the same samples"


def check_prior_log_prob(name: str, options: dict[str, Any] | None = None) -> None:
    """log_prob of its own samples is (n,), finite and differentiable in z; kl of a posterior is (N,) and finite.

    An ex-post prior also scores the codes it was fitted on above the same codes shifted away.
    """
    prior, _model = _ready_prior(name, options)
    if not prior.has_density:
        try:
            prior.log_prob(torch.zeros(2, LATENT))
        except NotImplementedError:
            return
        raise AssertionError(f"prior {name} declares has_density = False, but log_prob returned")
    z = prior.sample(7, _seeded(1)).detach().requires_grad_()
    log_p = prior.log_prob(z)
    assert log_p.shape == (7,), f"log_prob shape {tuple(log_p.shape)}, expected (7,)"
    assert torch.isfinite(log_p).all(), "non-finite log_prob of the prior's own samples"
    log_p.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all(), "log_prob has no finite gradient in z"
    g = _seeded(2)
    posterior = Posterior(torch.randn(4, LATENT, generator=g), 0.3 * torch.randn(4, LATENT, generator=g))
    kl = prior.kl(posterior, posterior.sample(g))
    assert kl.shape == (4,) and torch.isfinite(kl).all(), f"kl gave {kl}, expected 4 finite values"
    if prior.fitted_after_training:
        codes = _codes()
        fitted, away = prior.log_prob(codes).mean(), prior.log_prob(codes + 10).mean()
        assert fitted > away, f"fitted codes score {fitted:.2f}, no more than far-away codes ({away:.2f})"


def check_prior_gradients(name: str, options: dict[str, Any] | None = None) -> None:
    """The prior's trainable parameters (if any) get gradients through ``log_prob``."""
    prior, _model = _ready_prior(name, options)
    if not prior.has_density:  # nothing is differentiated; nor may the model's optimizer train it
        assert not any(p.requires_grad for p in prior.parameters()), f"prior {name} has trainable parameters"
        return
    log_p = prior.log_prob(torch.randn(7, LATENT, generator=_seeded(1)))
    if any(p.requires_grad for p in prior.parameters()):
        assert log_p.requires_grad, f"no gradient reaches prior {name}: log_prob ignores its parameters"
        log_p.sum().backward()
        _assert_gradients(prior, f"prior {name}")


def check_prior_state_round_trip(name: str, options: dict[str, Any] | None = None) -> None:
    """The prior's state dict loads into a fresh prior of the same options, which then scores codes alike."""
    prior, model = _ready_prior(name, options)
    fresh = build_part("prior", name, dict(options or {}), prior.dims)
    if model is not None:
        fresh.attach(model)
    fresh.load_state_dict(prior.state_dict())
    if not prior.has_density:
        same = torch.equal(fresh.sample(7, _seeded(1)), prior.sample(7, _seeded(1)))
        assert same, "reloaded prior samples differently"
        return
    z = torch.randn(7, LATENT, generator=_seeded(1))
    torch.testing.assert_close(fresh.log_prob(z), prior.log_prob(z), msg="reloaded prior scores differently")


# -- losses -----------------------------------------------------------------------------------------------------


def _loss_model(name: str, options: dict[str, Any] | None) -> tuple[Model, torch.Tensor]:
    model = _host_model("loss", name, options)
    return model, _images(model.config)


def check_loss_output(name: str, options: dict[str, Any] | None = None) -> None:
    """A ``LossOutput`` of finite scalar terms whose total is their sum (outside training); finite at progress 0."""
    model, x = _loss_model(name, options)
    out = model.loss(x, generator=_seeded(1))
    assert isinstance(out, LossOutput), f"loss returned a {type(out).__name__}, not a LossOutput"
    assert out.terms, "the loss returned no terms"
    for term, value in out.terms.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"loss term {term!r} is not a scalar tensor"
        assert torch.isfinite(value), f"loss term {term!r} is not finite"
    assert out.total.dim() == 0 and torch.isfinite(out.total), "the total is not a finite scalar"
    torch.testing.assert_close(out.total, sum(out.terms.values()), msg="total != sum of terms with progress None")
    assert torch.isfinite(model.loss(x, generator=_seeded(1), progress=0.0).total), "non-finite total at progress 0"


def check_loss_seeded(name: str, options: dict[str, Any] | None = None) -> None:
    """The same generator seed gives identical terms: the loss draws only from ``batch.generator``."""
    model, x = _loss_model(name, options)
    first, second = (model.loss(x, generator=_seeded(1)).terms for _ in range(2))
    assert first.keys() == second.keys(), "the terms differ between calls"
    for term in first:
        assert torch.equal(first[term], second[term]), f"term {term!r} differs for the same seed"


def check_loss_gradients(name: str, options: dict[str, Any] | None = None) -> None:
    """Gradients of the total reach the encoder and the decoder, finite."""
    model, x = _loss_model(name, options)
    model.loss(x, generator=_seeded(1)).total.backward()
    _assert_gradients(model.encoder, f"encoder {model.encoder.name} under loss {name}", every=False)
    _assert_gradients(model.decoder, f"decoder {model.decoder.name} under loss {name}", every=False)


ENCODER_CHECKS = (check_encoder_posterior, check_encoder_sampling, check_encoder_gradients)
DECODER_CHECKS = (check_decoder_shapes, check_decoder_gradients)
PRIOR_CHECKS = (check_prior_sample, check_prior_log_prob, check_prior_gradients, check_prior_state_round_trip)
LOSS_CHECKS = (check_loss_output, check_loss_seeded, check_loss_gradients)


class _PartConformance:
    """The checks of one part kind; subclasses set ``kind`` and add the kind's tests."""

    kind: ClassVar[str] = ""
    part_name: str = ""
    options: ClassVar[dict[str, Any]] = {}

    def test_options_round_trip(self) -> None:
        check_options_round_trip(self.kind, self.part_name, self.options)


class EncoderConformance(_PartConformance):
    """Inherit in a pytest module and set ``part_name`` (and ``options``) to check a registered encoder."""

    kind = "encoder"

    def test_posterior(self) -> None:
        check_encoder_posterior(self.part_name, self.options)

    def test_sampling(self) -> None:
        check_encoder_sampling(self.part_name, self.options)

    def test_gradients(self) -> None:
        check_encoder_gradients(self.part_name, self.options)


class DecoderConformance(_PartConformance):
    """Inherit in a pytest module and set ``part_name`` (and ``options``) to check a registered decoder."""

    kind = "decoder"

    def test_shapes(self) -> None:
        check_decoder_shapes(self.part_name, self.options)

    def test_gradients(self) -> None:
        check_decoder_gradients(self.part_name, self.options)


class PriorConformance(_PartConformance):
    """Inherit in a pytest module and set ``part_name`` (and ``options``) to check a registered prior."""

    kind = "prior"

    def test_sample(self) -> None:
        check_prior_sample(self.part_name, self.options)

    def test_log_prob(self) -> None:
        check_prior_log_prob(self.part_name, self.options)

    def test_gradients(self) -> None:
        check_prior_gradients(self.part_name, self.options)

    def test_state_round_trip(self) -> None:
        check_prior_state_round_trip(self.part_name, self.options)


class LossConformance(_PartConformance):
    """Inherit in a pytest module and set ``part_name`` (and ``options``) to check a registered loss."""

    kind = "loss"

    def test_output(self) -> None:
        check_loss_output(self.part_name, self.options)

    def test_seeded(self) -> None:
        check_loss_seeded(self.part_name, self.options)

    def test_gradients(self) -> None:
        check_loss_gradients(self.part_name, self.options)
