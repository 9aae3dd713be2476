import pytest
import torch
from torch.distributions import Normal, kl_divergence

import genkit
from genkit.testing import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", genkit.list_models())
def test_every_registered_model_conforms(name, check):
    torch.manual_seed(0)
    model = genkit.get_model(name)
    model.train()
    check(model)


def test_vae_kl_matches_torch_distributions():
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=10)
    x = torch.rand(8, 1, 28, 28)
    posterior = model.encode(x)
    ours = model.prior.kl(posterior, posterior.mean)
    q = Normal(posterior.mean, torch.exp(0.5 * posterior.logvar))
    p = Normal(torch.zeros_like(posterior.mean), torch.ones_like(posterior.mean))
    reference = kl_divergence(q, p).sum(1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert model.loss(x).terms["kl"].item() == pytest.approx(reference.mean().item(), abs=1e-5)
    assert model.loss(x, progress=0.5).terms["kl"].item() == pytest.approx(reference.mean().item(), abs=1e-5)


def test_kl_warmup_is_the_loss_option_and_weights_only_the_total():
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=4, **{"loss.kl_warmup": 4})
    x = torch.rand(8, 1, 28, 28)
    for progress, weight in [(0.0, 0.0), (1.0, 0.25), (2.0, 0.5), (4.0, 1.0), (9.0, 1.0), (None, 1.0)]:
        out = model.loss(x, generator=torch.Generator().manual_seed(1), progress=progress)
        expected = out.terms["reconstruction"] + weight * out.terms["kl"]
        torch.testing.assert_close(out.total, expected)


def test_beta_vae_kl_is_beta_times_vae_kl():
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    vae = genkit.get_model("vae-conv", latent=6)
    torch.manual_seed(1)
    beta_vae = genkit.get_model("beta-vae", latent=6, beta=4.0)
    vae_terms = vae.loss(x, generator=torch.Generator().manual_seed(2)).terms
    beta_terms = beta_vae.loss(x, generator=torch.Generator().manual_seed(2)).terms
    assert torch.equal(beta_terms["kl"], 4.0 * vae_terms["kl"])
    assert torch.equal(beta_terms["reconstruction"], vae_terms["reconstruction"])


def test_wrong_input_shape_is_a_clear_error():
    model = genkit.get_model("ae")
    with pytest.raises(genkit.ShapeError, match=r"expects images shaped \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        model.encode(torch.rand(2, 3, 28, 28))


def test_config_dict_round_trip_and_errors():
    cls = genkit.get_loss("elbo").config_class
    config = cls(beta=2.0)
    assert cls.from_dict(config.to_dict()) == config
    with pytest.raises(genkit.ConfigError, match="unknown option"):
        cls.from_dict({"beta": 4, "colour": "red"})
    with pytest.raises(genkit.ConfigError, match="JSON object"):
        cls.from_dict([1, 2])
    with pytest.raises(genkit.ConfigError, match="must be one of bernoulli, gaussian, logistic, got 'poisson'"):
        cls(likelihood="poisson")
    with pytest.raises(genkit.ConfigError, match="multiple of 4"):
        genkit.get_model("vae-conv", image_size=30)


def test_preset_defaults_and_shorthand_options():
    model = genkit.get_model("beta-vae", channels=8)
    assert model.config.latent == 10 and model.loss_fn.config.beta == 4.0
    assert model.encoder.config.channels == 8 and model.decoder.config.channels == 8
    assert {k: model.part(k).name for k in ("encoder", "decoder", "prior", "loss")} == {
        "encoder": "conv",
        "decoder": "conv",
        "prior": "normal",
        "loss": "elbo",
    }
    swapped = genkit.get_model("beta-vae", loss="iwae", **{"loss.k": 3, "encoder.hidden": 32})
    assert swapped.loss_fn.name == "iwae" and swapped.loss_fn.config.k == 3  # beta does not apply to iwae
    assert swapped.encoder.config.hidden == 32 and swapped.decoder.config.hidden == 256


@pytest.mark.parametrize("name", ["ae", "vae-conv"])
def test_deeper_conv_nets_keep_shapes_and_add_layers(name):
    shallow = genkit.get_model(name, latent=5, channels=4, hidden=16)
    deep = genkit.get_model(name, latent=5, channels=4, hidden=16, blocks=2)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) for model in (shallow, deep)]
    assert convs[1] == convs[0] + 2 * 2 * 2  # two resolutions in the encoder and two in the decoder
    x = torch.rand(3, 1, 28, 28)
    assert deep.reconstruct(x).shape == x.shape and deep.encode(x).mean.shape == (3, 5)
    with pytest.raises(genkit.ConfigError, match="blocks must be 0 or more, got -1"):
        genkit.get_model(name, blocks=-1)


def test_public_api_is_documented():
    for name in genkit.__all__:
        obj = getattr(genkit, name)
        assert getattr(obj, "__doc__", None), f"genkit.{name} has no docstring"
