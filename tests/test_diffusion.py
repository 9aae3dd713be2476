"""The diffusion prior: it learns a two-mode distribution of codes, reloads, and is usable by any model."""

import pytest
import torch

import genkit
from genkit.evaluate import nll_unavailable
from genkit.priors import fit_prior

SMALL = {"train_steps": 1500, "hidden": 64, "layers": 2, "sample_steps": 50}


def two_modes(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 2.0]])
    return centres[torch.randint(0, 2, (n,), generator=g)] + 0.5 * torch.randn(n, 2, generator=g)


def test_diffusion_prior_learns_both_modes_of_the_codes():
    prior = genkit.get_prior("diffusion", latent=2, **SMALL)
    prior.fit(two_modes())
    z = prior.sample(2000, torch.Generator().manual_seed(1))
    left = z[:, 0] < 0
    assert 0.42 < left.float().mean() < 0.58  # half the samples in each mode
    torch.testing.assert_close(z[left].mean(0), torch.tensor([-4.0, 0.0]), atol=0.2, rtol=0)
    torch.testing.assert_close(z[~left].mean(0), torch.tensor([4.0, 2.0]), atol=0.2, rtol=0)
    assert ((z[left].std(0) - 0.5).abs() < 0.15).all() and ((z[~left].std(0) - 0.5).abs() < 0.15).all()
    # fewer sampling steps still land in the modes
    coarse = genkit.get_prior("diffusion", latent=2, **{**SMALL, "sample_steps": 10})
    coarse.load_state_dict(prior.state_dict())
    far = coarse.sample(500, torch.Generator().manual_seed(2))
    assert ((far[:, 0].abs() - 4).abs() < 1.5).float().mean() > 0.9


def test_an_unfitted_diffusion_prior_and_bad_options_are_one_line_errors():
    prior = genkit.get_prior("diffusion", latent=2, **SMALL)
    with pytest.raises(genkit.ConfigError, match="not fitted"):
        prior.sample(3)
    with pytest.raises(genkit.ConfigError, match="sample_steps"):
        genkit.get_prior("diffusion", latent=2, timesteps=10, sample_steps=20)
    with pytest.raises(genkit.ShapeError, match="codes must be"):
        prior.fit(torch.zeros(10, 3))


def test_any_model_samples_through_a_fitted_diffusion_prior(tiny_images):
    model = genkit.get_model("vae-conv", latent=2, channels=4, hidden=16)
    prior = fit_prior(model, "diffusion", tiny_images, **{**SMALL, "train_steps": 200})
    assert model.prior is prior and not any(p.requires_grad for p in prior.parameters())
    samples = model.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert "has no density" in nll_unavailable(model)
