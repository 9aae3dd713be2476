"""The learned compressor's parts: the factorised entropy model's masses and tables, and the rd loss."""

import math

import pytest
import torch
from genkit_plugins.entropy import FactorizedPrior

import genkit
from genkit.cli import main


@pytest.fixture
def prior() -> FactorizedPrior:
    torch.manual_seed(0)
    p = genkit.get_prior("factorized", latent=3)
    with torch.no_grad():  # a spread of shapes: narrow, wide, off-centre
        p.means.copy_(torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.5, 4.0], [-6.0, 2.0, 2.5]]))
        p.log_scales.copy_(torch.tensor([[-2.0, 0.0, 0.5], [1.0, -1.0, 0.0], [0.0, 0.3, -0.5]]))
        p.logits.copy_(torch.randn(3, 3))
    return p


def _masses(prior: FactorizedPrior, k: torch.Tensor) -> torch.Tensor:
    """P(k) per dimension for integers ``k`` (n,): (n, 3)."""
    grid = k.float()[:, None, None].expand(len(k), 3, 1)
    return prior._cdf_difference(grid + 0.5, grid - 0.5)


def test_the_masses_of_all_integers_sum_to_one(prior):
    masses = _masses(prior, torch.arange(-300, 301))
    assert torch.allclose(masses.sum(0), torch.ones(3), atol=1e-5)
    # log_mass scores a code as the sum of its dimensions' log-masses
    z = torch.tensor([[0.0, 4.0, -6.0], [-1.0, 1.0, 2.0]])
    per_dim = torch.stack([_masses(prior, z[:, d])[:, d] for d in range(3)], 1)
    assert torch.allclose(prior.log_mass(z), per_dim.log().sum(1), atol=1e-5)


def test_the_integer_tables_follow_the_masses(prior):
    offsets, counts = prior.integer_masses()
    for d in range(3):
        width = int((counts[d] > 0).sum())
        assert bool((counts[d, :width] >= 1).all()) and bool((counts[d, width:] == 0).all())
        k = offsets[d] + torch.arange(width)
        table = counts[d, :width].double() / counts[d, :width].sum()
        exact = _masses(prior, k)[:, d].double()
        # floor(P * 2^20) + 1 per symbol: off by at most a count or two in 2^20, however rare the symbol
        assert torch.allclose(table, exact.detach(), rtol=1e-3, atol=2 * width / 2**20)


def test_samples_are_integers_from_the_masses(prior):
    draws = prior.sample(20000, torch.Generator().manual_seed(1))
    assert draws.shape == (20000, 3) and torch.equal(draws, draws.round())
    # the third dimension: P(z <= -3) under the mixture, against the draws' frequency
    column = draws[:, 2]
    below = _masses(prior, torch.arange(-300, -2))[:, 2].sum()
    assert float((column <= -3).float().mean()) == pytest.approx(float(below.detach()), abs=0.015)


def test_the_rd_loss_terms(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("compressor", latent=8, channels=4, hidden=16).eval()
    with torch.no_grad():
        out, y = model.loss(tiny_images), model.encode(tiny_images).mean
    assert torch.equal(y, y.round())  # the integer head rounds outside training
    with torch.no_grad():
        bits = -model.prior.log_mass(y).mean() / math.log(2)
        mse = torch.mean((model.decode(y) - tiny_images) ** 2)
    assert float(out.terms["rate"]) == pytest.approx(float(bits) / 784, rel=1e-5)
    assert float(out.terms["distortion"]) == pytest.approx(0.002 * 255**2 * float(mse), rel=1e-5)


def test_a_larger_lambda_buys_quality_with_bits(tiny_images):
    results = {}
    for lmbda in (0.0005, 0.05):
        torch.manual_seed(0)
        model = genkit.get_model("compressor", latent=8, channels=8, hidden=32, **{"loss.lmbda": lmbda})
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(150):
            opt.zero_grad()
            model.loss(tiny_images, generator=g).total.backward()
            opt.step()
        model.eval()
        terms = model.loss(tiny_images).terms
        results[lmbda] = (float(terms["rate"].detach()), float(terms["distortion"].detach()) / lmbda)
    (rate_low, err_low), (rate_high, err_high) = results[0.0005], results[0.05]
    assert rate_high > rate_low and err_high < err_low


def test_the_rd_loss_needs_an_entropy_model(tmp_path, capsys):
    assert main(["run", "compressor", "--prior", "normal", "--limit", "64", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--prior factorized" in err
