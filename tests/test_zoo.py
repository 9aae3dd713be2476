"""The literature's models: each loss checked against an identity or a closed form."""

import pytest
import torch
from genkit_plugins.losses import decoder_gradient_penalty

import genkit
from genkit import Batch

X = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def terms(model: genkit.Model, seed: int = 0) -> dict[str, float]:
    batch = Batch(X, X, torch.Generator().manual_seed(seed))
    return {k: v.item() for k, v in model.loss_fn(model, batch).terms.items()}


def test_beta_tcvae_terms_add_up_to_the_kl_estimate():
    """log q(z|x) - log p(z) = MI + TC + dimension-wise KL, sample by sample, whatever q(z)'s estimate."""
    model = genkit.get_model("beta-tcvae", latent=4, **{"loss.beta": 1.0})
    got = terms(model)
    posterior = model.encode(X)
    z = posterior.sample(torch.Generator().manual_seed(0))
    kl = (posterior.log_prob(z) - model.prior.log_prob(z)).mean().item()  # the one-draw estimate at that z
    assert got["mi"] + got["tc"] + got["dim_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-4)
    weighted = terms(genkit.get_model("beta-tcvae", latent=4, **{"loss.beta": 6.0}))
    assert weighted["tc"] == pytest.approx(6 * got["tc"], rel=1e-4, abs=1e-5)


def test_rae_l2_term_is_the_decoders_squared_weights():
    model = genkit.get_model("rae", latent=4, **{"loss.decoder_weight": 0.5, "loss.code_weight": 2.0})
    got = terms(model)
    squares = sum(p.pow(2).sum() for p in model.decoder.parameters()).item()
    assert got["decoder_l2"] == pytest.approx(0.5 * squares, rel=1e-5)
    codes = model.encode(X).mean
    assert got["code"] == pytest.approx(2.0 * 0.5 * codes.pow(2).sum(1).mean().item(), rel=1e-5)
    assert model.prior.fitted_after_training  # samples come from the gmm fitted after training


def test_rae_gradient_penalty_estimates_the_jacobian_norm():
    """For a decoder whose images are W z + b, |J|_F^2 = |W|_F^2; the v ~ N(0, I) estimate averages to it."""
    torch.manual_seed(0)
    W = 0.01 * torch.randn(784, 3)

    class Linear(genkit.Decoder):
        def forward(self, z):
            return torch.logit(z @ W.T + 0.5).view(-1, 1, 28, 28)

    dims = genkit.ModelConfig(latent=3)
    model = genkit.get_model("rae-gp", latent=3)
    model.decoder = Linear(dims=dims)
    z = 0.1 * torch.randn(4000, 3)
    estimate = decoder_gradient_penalty(model.eval(), z, torch.Generator().manual_seed(1)).item()
    assert estimate == pytest.approx(W.pow(2).sum().item(), rel=0.05)
    with torch.no_grad():  # the trainer evaluates without gradients; the penalty is still measured
        assert decoder_gradient_penalty(model, z[:10], None).item() > 0


def test_rae_gp_penalty_trains_the_decoder():
    model = genkit.get_model("rae-gp", latent=4).train()
    loss = model.loss_fn(model, Batch(X, X, torch.Generator().manual_seed(0)))
    assert set(loss.terms) == {"reconstruction", "code", "decoder_gp"}
    loss.terms["decoder_gp"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())


def test_info_vae_weights_its_kl_and_mmd_terms():
    torch.manual_seed(0)
    base = terms(genkit.get_model("info-vae", latent=4, **{"loss.alpha": 0.0, "loss.weight": 1.0}))
    assert base["mmd"] == 0.0  # alpha + lambda - 1 = 0: the plain VAE
    torch.manual_seed(0)  # the same initial weights
    vae = terms(genkit.get_model("vae-conv", latent=4))
    assert base["kl"] == pytest.approx(vae["kl"], rel=1e-5)
    mmd_only = terms(genkit.get_model("info-vae", latent=4, **{"loss.alpha": 1.0, "loss.weight": 10.0}))
    assert mmd_only["kl"] == 0.0 and mmd_only["mmd"] != 0.0
    with pytest.raises(genkit.ConfigError, match="alpha <= 1"):
        genkit.get_model("info-vae", **{"loss.alpha": 2.0})
