"""The ``gmm`` prior: EM recovers a known mixture, scores like torch.distributions, survives save/load."""

from __future__ import annotations

import pytest
import torch
from genkit_plugins.gmm import GaussianMixturePrior
from safetensors.torch import load_file, save_file
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import genkit
from genkit import ConfigError, DataError, Posterior, ShapeError

TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
TRUE_MEANS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]])
TRUE_SCALES = torch.tensor([[[0.6, 0.0], [0.3, 1.0]], [[1.0, 0.0], [0.0, 0.5]], [[0.7, 0.0], [-0.2, 0.4]]])


def mixture_codes(n: int = 6000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    component = torch.multinomial(TRUE_WEIGHTS, n, replacement=True, generator=g)
    eps = torch.randn(n, 2, 1, generator=g)
    return TRUE_MEANS[component] + (TRUE_SCALES[component] @ eps).squeeze(-1)


@pytest.fixture(scope="module")
def fitted() -> GaussianMixturePrior:
    prior = GaussianMixturePrior(2, components=3)
    prior.fit(mixture_codes())
    return prior


def by_first_coordinate(means: torch.Tensor) -> torch.Tensor:
    return torch.argsort(means[:, 0] + 1e-3 * means[:, 1])


def test_fit_recovers_a_known_mixture(fitted):
    assert bool(fitted.fitted)
    assert fitted.fit_info["converged"]
    order, true_order = by_first_coordinate(fitted.means), by_first_coordinate(TRUE_MEANS)
    torch.testing.assert_close(fitted.means[order], TRUE_MEANS[true_order], atol=0.08, rtol=0)
    torch.testing.assert_close(fitted.weights[order], TRUE_WEIGHTS[true_order], atol=0.02, rtol=0)
    assert fitted.weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    cov = fitted.scale_tril @ fitted.scale_tril.transpose(1, 2)
    true_cov = TRUE_SCALES @ TRUE_SCALES.transpose(1, 2)
    torch.testing.assert_close(cov[order], true_cov[true_order], atol=0.08, rtol=0.1)


def test_fit_is_deterministic_for_a_seed():
    codes = mixture_codes(2000, seed=3)
    a, b = GaussianMixturePrior(2, components=4, seed=7), GaussianMixturePrior(2, components=4, seed=7)
    a.fit(codes)
    b.fit(codes)
    for name in ("weights", "means", "scale_tril"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_log_prob_matches_torch_mixture(fitted):
    reference = MixtureSameFamily(
        Categorical(probs=fitted.weights.double()),
        MultivariateNormal(fitted.means.double(), scale_tril=fitted.scale_tril.double()),
    )
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1)) * 4
    ours = fitted.log_prob(z)
    assert ours.shape == (500,)
    torch.testing.assert_close(ours.double(), reference.log_prob(z.double()), atol=1e-4, rtol=1e-5)
    # float64 codes are scored in float64
    torch.testing.assert_close(fitted.log_prob(z.double()), reference.log_prob(z.double()), atol=1e-9, rtol=1e-6)


def test_log_prob_is_differentiable_and_kl_uses_monte_carlo(fitted):
    z = torch.zeros(4, 2, requires_grad=True)
    fitted.log_prob(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    posterior = Posterior(torch.zeros(4, 2), torch.zeros(4, 2))
    kl = fitted.kl(posterior, posterior.sample(torch.Generator().manual_seed(0)))
    assert kl.shape == (4,) and torch.isfinite(kl).all()


def test_samples_shape_device_and_distribution(fitted):
    samples = fitted.sample(20000, torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 2)
    assert samples.device == fitted.device
    assert samples.dtype == torch.float32
    expected_mean = (fitted.weights.unsqueeze(1) * fitted.means).sum(0)
    torch.testing.assert_close(samples.mean(0), expected_mean, atol=0.1, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_works_on_cuda(fitted):
    prior = GaussianMixturePrior(2, components=3)
    prior.load_state_dict(fitted.state_dict())
    prior = prior.to("cuda")
    samples = prior.sample(10, torch.Generator("cuda").manual_seed(0))
    assert samples.device.type == "cuda"
    assert prior.log_prob(samples).device.type == "cuda"
    fresh = GaussianMixturePrior(2, components=3).to("cuda")
    fresh.fit(mixture_codes(2000).to("cuda"))
    assert fresh.means.device.type == "cuda" and bool(fresh.fitted)


def test_state_dict_round_trip_through_safetensors(fitted, tmp_path):
    path = tmp_path / "prior.safetensors"
    save_file({k: v.contiguous() for k, v in fitted.state_dict().items()}, str(path))
    fresh = GaussianMixturePrior(2, components=3)
    fresh.load_state_dict(load_file(str(path)))
    assert bool(fresh.fitted)
    a = fitted.sample(64, torch.Generator().manual_seed(5))
    b = fresh.sample(64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(fitted.log_prob(a), fresh.log_prob(a))


def test_state_dict_of_another_size_does_not_load(fitted):
    with pytest.raises(RuntimeError, match="size mismatch"):
        GaussianMixturePrior(2, components=4).load_state_dict(fitted.state_dict())


def test_unfitted_prior_raises_a_clear_error(tmp_path):
    prior = GaussianMixturePrior(3)
    with pytest.raises(ConfigError, match="fit the gmm prior on latent codes first"):
        prior.sample(4)
    with pytest.raises(ConfigError, match="fit the gmm prior on latent codes first"):
        prior.log_prob(torch.zeros(2, 3))
    # the flag is state: an unfitted prior saved and reloaded is still unfitted
    path = tmp_path / "unfitted.safetensors"
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, str(path))
    again = GaussianMixturePrior(3)
    again.load_state_dict(load_file(str(path)))
    with pytest.raises(ConfigError, match="fit the gmm prior"):
        again.sample(1)


def test_bad_inputs_raise_genkit_errors():
    with pytest.raises(ConfigError):
        GaussianMixturePrior(2, components=0)
    prior = GaussianMixturePrior(2, components=3)
    with pytest.raises(ShapeError):
        prior.fit(torch.zeros(100, 3))
    with pytest.raises(DataError, match="too few"):
        prior.fit(torch.randn(4, 2))
    with pytest.raises(DataError, match="NaN"):
        prior.fit(torch.full((100, 2), float("nan")))


def test_registered_as_gmm():
    prior = genkit.get_prior("gmm", 4)
    assert isinstance(prior, GaussianMixturePrior)
    assert prior.latent == 4 and prior.components == 10
    assert prior.means.shape == (10, 4) and prior.scale_tril.shape == (10, 4, 4)
