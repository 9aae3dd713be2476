"""Every registered part passes its conformance checks; the built-in parts compose, train and do what they claim."""

import itertools
import math
from typing import ClassVar

import pytest
import torch
from genkit_plugins.losses import imq_mmd
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import genkit
from genkit import registry
from genkit.checkpoint import load_model, save_run
from genkit.data import ImageData
from genkit.testing import (
    DECODER_CHECKS,
    ENCODER_CHECKS,
    LOSS_CHECKS,
    PRIOR_CHECKS,
    DecoderConformance,
    EncoderConformance,
    LossConformance,
    PriorConformance,
    check_options_round_trip,
)
from genkit.train import TrainConfig, Trainer

#: small nets: every test here trains or scores in well under a second
SMALL = {"latent": 4, "channels": 8, "hidden": 32}
TRAIN = TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_data(images: torch.Tensor) -> ImageData:
    return ImageData(images, torch.zeros(len(images), dtype=torch.long))


# -- conformance of every registered part ---------------------------------------------------------------------------


@pytest.mark.parametrize("check", ENCODER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", registry.encoders.names())
@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_every_registered_encoder_conforms(name, check, head):
    options = {"head": head} if "head" in registry.encoders.load(name).config_class.defaults() else {}
    if head != "gaussian" and not options:
        pytest.skip(f"encoder {name} has no head option")
    check(name, options)


@pytest.mark.parametrize("check", DECODER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", registry.decoders.names())
def test_every_registered_decoder_conforms(name, check):
    check(name)


@pytest.mark.parametrize("name", registry.decoders.names())
def test_every_registered_decoder_predicts_a_scale_per_pixel(name):
    # the likelihood asks for two outputs per pixel through dims.image_channels; no decoder knows about it
    options = {"loss.likelihood": "logistic", "loss.scale": "decoded", "channels": 4, "hidden": 16}
    model = genkit.get_model("vae-conv", decoder=name, latent=49, **options)
    z = torch.randn(3, 49, generator=torch.Generator().manual_seed(0))
    assert model.decode_logits(z).shape == (3, 2, 28, 28)
    images = model.decode(z).detach()
    assert images.shape == (3, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1


#: options for the checks: slow parts made fast (diffusion's defaults fit for a minute), and room in the
#: code-index priors for the checks' synthetic (unquantised) codes
FAST = {
    "diffusion": {"train_steps": 100, "hidden": 32, "layers": 1, "sample_steps": 10},
    "categorical": {"codebook": 1024},
    "autoregressive": {"codebook": 1024, "train_steps": 20, "width": 16, "heads": 2, "layers": 1},
}


@pytest.mark.parametrize("check", PRIOR_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", registry.priors.names())
def test_every_registered_prior_conforms(name, check):
    check(name, FAST.get(name))


@pytest.mark.parametrize("check", LOSS_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", registry.losses.names())
def test_every_registered_loss_conforms(name, check):
    check(name)


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, reg in registry.PARTS.items() for n in reg.names()])
def test_every_registered_part_round_trips_its_options(kind, name):
    check_options_round_trip(kind, name)


# The conformance classes, as a plugin's tests use them (with options other than the defaults).


class TestConvEncoderConformance(EncoderConformance):
    part_name = "conv"
    options: ClassVar[dict] = {"channels": 4, "hidden": 16, "blocks": 1, "head": "deterministic"}


class TestMLPDecoderConformance(DecoderConformance):
    part_name = "mlp"
    options: ClassVar[dict] = {"hidden": 24, "layers": 1}


class TestVampPriorConformance(PriorConformance):
    part_name = "vamp"
    options: ClassVar[dict] = {"components": 3}


class TestIWAELossConformance(LossConformance):
    part_name = "iwae"
    options: ClassVar[dict] = {"k": 3, "likelihood": "gaussian", "sigma": 0.5}


# -- compositions of the built-in parts ----------------------------------------------------------------------------

# What cannot work together, from what each part needs: elbo and iwae need a posterior density (the gaussian head)
# and a prior with a density during training, as wae-mmd needs prior samples during training (gmm is fitted only
# after training); vamp mixes the encoder's posteriors (the gaussian head). Every other combination trains.
CONFLICTS = [
    (("head", "deterministic"), ("loss", "elbo")),
    (("head", "deterministic"), ("loss", "iwae")),
    (("head", "deterministic"), ("prior", "vamp")),
    (("prior", "gmm"), ("loss", "elbo")),
    (("prior", "gmm"), ("loss", "iwae")),
    (("prior", "gmm"), ("loss", "wae-mmd")),
]
COMBINATIONS = list(
    itertools.product(
        ["conv", "mlp"],
        ["gaussian", "deterministic"],
        ["normal", "mog", "vamp", "gmm"],
        ["reconstruction", "elbo", "iwae", "wae-mmd"],
    )
)


@pytest.mark.parametrize(("encoder", "head", "prior", "loss"), COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_built_in_parts_compose_or_refuse_in_one_line(encoder, head, prior, loss):
    choice = {"head": head, "prior": prior, "loss": loss}
    clashes = [pair for pair in CONFLICTS if all(choice[slot] == value for slot, value in pair)]
    options = {**SMALL, "encoder.head": head}
    if prior != "normal":
        options["prior.components"] = 3
    if loss == "iwae":
        options["loss.k"] = 2

    def build():
        return genkit.get_model("vae-conv", encoder=encoder, prior=prior, loss=loss, **options)

    if clashes:
        with pytest.raises(genkit.ConfigError) as info:
            build()
        message = str(info.value)
        assert "\n" not in message.strip(), message
        labels = {"head": f"encoder {encoder}", "prior": f"prior {prior}", "loss": f"loss {loss}"}
        assert any(all(labels[slot] in message for slot, _ in pair) for pair in clashes), message
        return
    torch.manual_seed(0)
    model = build().train()
    x = torch.rand(8, 1, 28, 28, generator=seeded(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_value = model.loss(x, generator=seeded(1)).total
    assert torch.isfinite(loss_value), loss_value
    optimizer.zero_grad()
    loss_value.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.loss(x, generator=seeded(2)).total)


# -- the losses compute what they claim ----------------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_iwae_with_one_sample_is_the_elbo(prior):
    # These priors' KL is the one-draw estimate log q(z) - log p(z), so the ELBO and the 1-sample bound share z.
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", prior=prior, **SMALL, **{"prior.components": 3})
    x = torch.rand(8, 1, 28, 28, generator=seeded(0))
    model.loss_fn = genkit.get_loss("elbo")
    elbo = model.loss(x, generator=seeded(5))
    model.loss_fn = genkit.get_loss("iwae", k=1)
    iwae = model.loss(x, generator=seeded(5))
    torch.testing.assert_close(iwae.terms["iwae"], elbo.total, rtol=1e-5, atol=1e-4)
    other = model.loss(x, generator=seeded(6)).terms["iwae"]
    assert not torch.allclose(other, iwae.terms["iwae"], rtol=1e-5, atol=1e-4)  # the draws matter


def test_more_importance_samples_give_a_tighter_bound(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(20):  # a little training makes the decoder depend on z, so the weights vary
        batch = tiny_images[step * 16 % 64 :][:16]
        loss = model.loss(batch, generator=seeded(step)).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bounds = {}
    with torch.no_grad():
        for k in (1, 50):
            model.loss_fn = genkit.get_loss("iwae", k=k)
            runs = [model.loss(tiny_images[:32], generator=seeded(100 + s)).terms["iwae"] for s in range(4)]
            bounds[k] = torch.stack(runs).mean().item()
    # Observed: about 188 nats for k=1 and 177 for k=50.
    assert bounds[50] < bounds[1] - 5, bounds


def test_imq_mmd_matches_a_double_loop():
    g = seeded(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(6, 3, generator=g, dtype=torch.float64) + 1.0
    c = 2.0 * 3 * 1.0
    xs, ys, n = x.tolist(), y.tolist(), 6

    def kernel(a, b):
        return c / (c + sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)))

    within_x = sum(kernel(xs[i], xs[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_y = sum(kernel(ys[i], ys[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    between = sum(kernel(xs[i], ys[j]) for i in range(n) for j in range(n)) / (n * n)
    reference = within_x + within_y - 2 * between
    assert math.isfinite(reference) and reference > 0
    assert imq_mmd(x, y, c).item() == pytest.approx(reference, rel=1e-10)
    assert imq_mmd(x.float(), y.float(), c).item() == pytest.approx(reference, rel=1e-4)


def test_wae_trains_when_the_last_batch_holds_one_image(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("wae", **SMALL)
    Trainer(model, TRAIN).fit(image_data(tiny_images[:17]))


# -- the learned priors ----------------------------------------------------------------------------------------------


def test_mog_log_prob_matches_torch_distributions():
    prior = genkit.get_prior("mog", latent=3, components=4)
    g = seeded(0)
    with torch.no_grad():  # away from the initial equal weights and unit variances
        prior.logits.copy_(torch.randn(4, generator=g))
        prior.logvars.copy_(0.5 * torch.randn(4, 3, generator=g))
    reference = MixtureSameFamily(
        Categorical(logits=prior.logits), Independent(Normal(prior.means, (0.5 * prior.logvars).exp()), 1)
    )
    for shape in [(7, 3), (2, 5, 3)]:
        z = 2 * torch.randn(shape, generator=g)
        torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))


def test_vamp_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", prior="vamp", **SMALL, **{"prior.components": 5})
    q = model.encoder(torch.sigmoid(model.prior.pseudo_inputs))
    reference = MixtureSameFamily(
        Categorical(logits=torch.zeros(5)), Independent(Normal(q.mean, (0.5 * q.logvar).exp()), 1)
    )
    g = seeded(0)
    for shape in [(7, 4), (2, 5, 4)]:
        z = torch.randn(shape, generator=g)
        torch.testing.assert_close(model.prior.log_prob(z), reference.log_prob(z))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_learned_prior_trains_and_survives_save_and_load(prior, tiny_images, tmp_path):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", prior=prior, **SMALL, **{"prior.components": 3})
    before = {k: v.clone() for k, v in model.prior.state_dict().items()}
    Trainer(model, TRAIN).fit(image_data(tiny_images))
    for name, param in model.prior.named_parameters():
        assert not torch.equal(param, before[name]), f"prior parameter {name} did not train"

    loaded = load_model(save_run(model, tmp_path / "run"))
    assert type(loaded.prior) is type(model.prior) and loaded.prior.name == prior
    saved, reloaded = model.prior.state_dict(), loaded.prior.state_dict()
    assert saved.keys() == reloaded.keys()
    for key in saved:
        assert torch.equal(saved[key], reloaded[key]), key
    model.eval()
    z = torch.randn(6, 4, generator=seeded(1))
    torch.testing.assert_close(loaded.prior.log_prob(z), model.prior.log_prob(z))


def test_trainer_trains_a_prior_swapped_in_before_fit(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", **SMALL)
    trainer = Trainer(model, TRAIN)
    model.prior = genkit.get_prior("mog", dims=model.config, components=3)
    model.check_parts()
    before = {k: v.clone() for k, v in model.prior.named_parameters()}
    trainer.fit(image_data(tiny_images))
    owned = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for name, param in model.prior.named_parameters():
        assert id(param) in owned, f"prior parameter {name} is not in the optimizer"
        assert not torch.equal(param, before[name]), f"prior parameter {name} did not train"


# -- the checks catch broken parts ---------------------------------------------------------------------------------


class UnseededLoss(genkit.Loss):
    """Draws its posterior sample from the global generator instead of batch.generator."""

    def forward(self, model, batch):
        posterior = model.encode(batch.x)
        z = posterior.mean + torch.randn_like(posterior.mean)
        return genkit.LossOutput({"reconstruction": genkit.reconstruction_nll(model.decode_logits(z), batch.target)})


class CroppingDecoder(genkit.Decoder):
    """Always 28x28 logits, whatever the image size."""

    def __init__(self, config, dims):
        super().__init__(config, dims)
        self.body = torch.nn.Linear(dims.latent, dims.image_channels * 28 * 28)

    def forward(self, z):
        return self.body(z).view(z.shape[0], self.dims.image_channels, 28, 28)


class FrozenPrior(genkit.Prior):
    """A learnable mean that log_prob ignores (detached), and samples that ignore the generator's seed."""

    def __init__(self, config, dims):
        super().__init__(config, dims)
        self.mean = torch.nn.Parameter(torch.zeros(dims.latent))

    def sample(self, n, generator=None):
        return self.mean.detach().expand(n, -1).clone()

    def log_prob(self, z):
        return -0.5 * ((z - self.mean.detach()) ** 2).sum(-1)


@pytest.mark.parametrize(
    ("kind", "part", "check", "match"),
    [
        ("loss", UnseededLoss, "check_loss_seeded", "differs for the same seed"),
        ("decoder", CroppingDecoder, "check_decoder_shapes", "logits shape"),
        ("prior", FrozenPrior, "check_prior_sample", "other seeds gave the same samples"),
        ("prior", FrozenPrior, "check_prior_gradients", "no gradient reaches prior"),
    ],
)
def test_the_checks_catch_broken_parts(kind, part, check, match):
    import genkit.testing

    registry.PARTS[kind].register("broken", part)
    try:
        with pytest.raises(AssertionError, match=match):
            getattr(genkit.testing, check)("broken")
    finally:
        registry.PARTS[kind].unregister("broken")


def test_fcn_codes_are_a_grid_of_local_codes():
    torch.manual_seed(0)
    dims = genkit.ModelConfig(latent=2 * 49)  # 2 channels on the 7x7 grid of 28-pixel images
    encoder = genkit.get_encoder("fcn", dims, channels=4, head="gaussian")
    decoder = genkit.get_decoder("fcn", dims, channels=4)
    x = torch.rand(2, 1, 28, 28, generator=seeded(0))
    posterior = encoder(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 98)
    assert decoder(posterior.mean).shape == (2, 1, 28, 28)
    # a pixel in the top-left corner changes the codes near it and none at the far corner of the grid
    y = x.clone()
    y[:, :, 0, 0] += 1
    moved = (encoder(y).mean - posterior.mean).abs().view(2, 2, 7, 7) > 0
    assert moved[:, :, 0, 0].all() and not moved[:, :, 4:, 4:].any()
    with pytest.raises(genkit.ConfigError, match=r"latent must be a multiple of 49, got 50: e\.g\. --latent 392"):
        genkit.get_encoder("fcn", genkit.ModelConfig(latent=50))


@pytest.mark.parametrize("net", ["conv", "fcn"])
@pytest.mark.parametrize(("stages", "size", "side"), [(1, 28, 14), (2, 28, 7), (3, 32, 4)])
def test_stages_set_how_often_the_nets_halve_the_image(net, stages, size, side):
    dims = genkit.ModelConfig(latent=side * side, image_size=size)
    options = {"channels": 4, "stages": stages, **({"hidden": 8} if net == "conv" else {})}
    encoder = genkit.get_encoder(net, dims, **options, head="deterministic")
    decoder = genkit.get_decoder(net, dims, **options)
    halvings = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(halvings) == stages
    codes = encoder(torch.rand(3, 1, size, size)).mean
    assert codes.shape == (3, side * side) and decoder(codes).shape == (3, 1, size, size)


@pytest.mark.parametrize("net", ["conv", "fcn"])
def test_a_seed_gives_the_nets_the_initial_weights_it_always_gave(net):
    # the first convolution draws its weights first after the seed, as it did when the benchmark rows were made
    dims = genkit.ModelConfig(latent=16 if net == "conv" else 49)
    torch.manual_seed(3)
    first = next(m for m in genkit.get_encoder(net, dims, channels=4).modules() if isinstance(m, torch.nn.Conv2d))
    torch.manual_seed(3)
    assert torch.equal(first.weight, torch.nn.Conv2d(1, 4, 4, 2, 1).weight)


@pytest.mark.parametrize("margin", [0.3, 0.05])
def test_the_gaussian_likelihood_puts_black_at_a_finite_logit(margin):
    from genkit.losses import LikelihoodConfig, likelihood_images, reconstruction_log_likelihood

    logits = torch.linspace(-40, 40, 8001).view(-1, 1, 1, 1).requires_grad_()  # one one-pixel image per logit
    black = torch.zeros_like(logits)
    gaussian = LikelihoodConfig(likelihood="gaussian", sigma=0.1, margin=margin)
    log_p = reconstruction_log_likelihood(logits, black, gaussian)
    # the mean (1 + 2m) sigmoid(l) - m is 0 at l = log(m / (1 + m)): the likelihood's peak, not the grid's end
    peak = math.log(margin / (1 + margin))
    assert float(logits[log_p.argmax()].detach()) == pytest.approx(peak, abs=0.01)
    (slope,) = torch.autograd.grad(log_p.sum(), logits)
    assert bool((slope * (peak - logits) >= 0).all())  # every step leads towards the peak, none away from it
    images = likelihood_images(logits.detach(), gaussian)
    assert images.min() == 0 and images.max() == 1 and images[4000].item() == pytest.approx(0.5)
    # the plain sigmoid (margin 0): a black pixel's likelihood rises for ever towards -inf, where its slope
    # underflows: the trap a deep net falls into at its first steps, staying black (docs/benchmarks.md)
    plain = reconstruction_log_likelihood(logits, black, LikelihoodConfig(likelihood="gaussian", margin=0.0))
    (plain_slope,) = torch.autograd.grad(plain.sum(), logits)
    assert int(plain.argmax()) == 0 and bool((plain_slope <= 0).all()) and float(plain_slope[0]) > -1e-12
