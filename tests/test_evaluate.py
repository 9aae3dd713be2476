"""Test-set scoring: the importance-sampled likelihood against a closed form, and ``genkit eval``."""

import json
import math

import pytest
import torch
from torch import Tensor

import genkit
from genkit.cli import main
from genkit.data import ImageData
from genkit.evaluate import estimate_nll, log_likelihood, nll_unavailable
from genkit.losses import MARGIN, ELBOConfig
from genkit.train import TrainConfig, Trainer

SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16", "--quiet"]

LATENT, SIDE, SIGMA = 3, 4, 0.03
PIXELS = SIDE * SIDE


class LinearGaussian:
    """x = W z + b + sigma * noise with z ~ N(0, I): p(x) = N(b, W W^T + sigma^2 I) in closed form."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.W = 0.02 * torch.randn(PIXELS, LATENT, generator=g, dtype=torch.float64)
        self.b = torch.full((PIXELS,), 0.5, dtype=torch.float64)
        precision = torch.eye(LATENT, dtype=torch.float64) + self.W.T @ self.W / SIGMA**2
        self.post_cov = torch.linalg.inv(precision)

    def sample(self, n: int) -> Tensor:
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.b + SIGMA * torch.randn(n, PIXELS, generator=g, dtype=torch.float64)
        return x.view(n, 1, SIDE, SIDE).float()

    def log_px(self, x: Tensor) -> Tensor:
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(PIXELS, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)
        return dist.log_prob(x.flatten(1).double())


def linear_gaussian_vae(truth: LinearGaussian, widen: float = 1.3) -> genkit.Model:
    """A genkit model whose decoder is the linear map (through the gaussian likelihood's stretched sigmoid) and
    whose encoder gives the exact posterior mean with diagonal variances ``widen`` times the exact ones (an
    imperfect but good proposal)."""

    class Encoder(genkit.Encoder):
        def forward(self, x: Tensor) -> genkit.Posterior:
            r = x.flatten(1).double() - truth.b
            mean = (r @ truth.W / SIGMA**2) @ truth.post_cov
            logvar = torch.log(widen * torch.diagonal(truth.post_cov)).expand_as(mean)
            return genkit.Posterior(mean.float(), logvar.float())

    class Decoder(genkit.Decoder):
        def forward(self, z: Tensor) -> Tensor:
            mean = z.double() @ truth.W.T + truth.b  # in (0, 1), where the stretched sigmoid reaches it
            return torch.logit((mean + MARGIN) / (1 + 2 * MARGIN)).float().view(-1, 1, SIDE, SIDE)

    dims = genkit.ModelConfig(latent=LATENT, image_size=SIDE, image_channels=1)
    model = genkit.Model(
        dims,
        encoder=Encoder(dims=dims),
        decoder=Decoder(dims=dims),
        prior=genkit.StandardNormal(LATENT),
        loss=genkit.ELBOLoss(ELBOConfig(likelihood="gaussian", sigma=SIGMA)),
    )
    model.dummy = torch.nn.Parameter(torch.zeros(()))  # a parameter, so that the model has a device
    return model


def test_nll_of_a_linear_gaussian_vae_equals_the_closed_form():
    truth = LinearGaussian()
    images = truth.sample(200)
    model = linear_gaussian_vae(truth)
    estimate = log_likelihood(model, images, samples=500).double()
    exact = truth.log_px(images)
    diff = estimate - exact
    # within three standard errors of the mean difference, which is itself tiny next to log p(x)
    assert abs(diff.mean()) <= 3 * diff.std() / math.sqrt(len(diff)) + 1e-3
    assert diff.abs().max() < 0.05 and exact.abs().mean() > 20
    # the one-sample bound (the ELBO) is below, by the posterior's mismatch
    elbo = log_likelihood(model, images, samples=1).double()
    assert (exact - elbo).mean() > 0.01


def test_the_estimate_tightens_with_more_samples_and_repeats_with_its_seed():
    truth = LinearGaussian()
    images = truth.sample(100)
    model = linear_gaussian_vae(truth, widen=3.0)  # a poor proposal: the bound is loose at small K
    means = [log_likelihood(model, images, samples=k).mean().item() for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2] <= truth.log_px(images).mean().item() + 0.01
    again = log_likelihood(model, images, samples=10).mean().item()
    assert again == means[1]


def test_bits_per_dim_and_standard_error():
    truth = LinearGaussian()
    images = truth.sample(50)
    result = estimate_nll(linear_gaussian_vae(truth), images, samples=20)
    assert result.bits_per_dim == pytest.approx(result.nats / (PIXELS * math.log(2)))
    nll = -log_likelihood(linear_gaussian_vae(truth), images, samples=20)
    assert result.stderr == pytest.approx(float(nll.std() / math.sqrt(50)))
    assert (result.samples, result.images, result.likelihood) == (20, 50, "gaussian")


def test_models_without_densities_say_why():
    ae = genkit.get_model("ae", latent=2)
    assert "encoder gives point codes" in nll_unavailable(ae)
    with pytest.raises(ValueError, match="has no NLL"):
        log_likelihood(ae, torch.rand(2, 1, 28, 28), samples=2)
    assert nll_unavailable(genkit.get_model("vae-conv", latent=2)) is None
    gmm = genkit.get_model("vae-conv", latent=2, prior="gmm", check=False)  # an ex-post prior, not yet fitted
    assert "cannot score codes" in nll_unavailable(gmm)


def test_genkit_eval_scores_a_run_and_saves_eval_json(image_folder, tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["run", "vae-conv", "--latent", "2", *SMALL, "--dataset", str(image_folder), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--nll", "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "NLL" in out and "nats" in out and "bits/dim" in out and "K=8" in out
    saved = json.loads((run / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert saved["test"]["images"] == json.loads((run / "metrics.json").read_text())["test_images"]
    assert saved["test"]["mse"] == pytest.approx(metrics["mse"], rel=1e-5)
    assert saved["nll"]["samples"] == 8 and saved["nll"]["nats"] > 0
    # the NLL is no better than the test ELBO the run measured (K=8 tightens the one-sample bound)
    assert saved["nll"]["nats"] <= metrics["loss"] * 1.05


def test_genkit_eval_of_an_autoencoder_gives_the_reason_and_the_other_scores(image_folder, tmp_path, capsys):
    run = tmp_path / "ae"
    assert main(["run", "ae", "--latent", "2", *SMALL, "--dataset", str(image_folder), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--nll", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    reason = [line for line in out.splitlines() if line.startswith("NLL")]
    assert len(reason) == 1 and "ae has no NLL: its encoder gives point codes" in reason[0]
    saved = json.loads((run / "eval.json").read_text())
    assert "mse" in saved["test"] and "psnr_denoised" in saved["test"] and "unavailable" in saved["nll"]


def test_eval_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), "--nll"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err


def test_binarize_trains_on_fresh_bernoulli_draws_each_epoch(tiny_images):
    seen: list[Tensor] = []

    class Recording(genkit.ReconstructionLoss):
        def forward(self, model, batch):
            seen.append(batch.target.clone())
            return super().forward(model, batch)

    dims = genkit.ModelConfig(latent=2)
    model = genkit.Model(
        dims,
        encoder=genkit.get_encoder("mlp", dims, hidden=8, layers=1, head="deterministic"),
        decoder=genkit.get_decoder("mlp", dims, hidden=8, layers=1),
        prior=genkit.StandardNormal(2),
        loss=Recording(),
    )
    config = TrainConfig(epochs=2, batch_size=64, binarize=True, progress=False, device="cpu")
    data = ImageData(tiny_images, torch.zeros(64, dtype=torch.long))
    Trainer(model, config).fit(data)
    first, second = seen[0], seen[1]  # one batch per epoch, the whole set in another order
    assert set(first.unique().tolist()) == {0.0, 1.0} and set(second.unique().tolist()) == {0.0, 1.0}
    # each image's draws average to its grey levels: the mean pixel matches, the draws differ between epochs
    assert first.mean().item() == pytest.approx(tiny_images.mean().item(), abs=0.01)
    assert not torch.equal(first.sum(0), second.sum(0))


def test_a_binarized_run_is_scored_on_binary_test_images(image_folder, tmp_path, capsys):
    run = tmp_path / "bin"
    args = ["run", "vae-conv", "--latent", "2", "--binarize", *SMALL, "--dataset", str(image_folder)]
    assert main([*args, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["binarize"] is True
    capsys.readouterr()
    assert main(["eval", str(run), "--nll", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert ", binarised" in out and "not a normalised likelihood" not in out
    assert json.loads((run / "eval.json").read_text())["test"]["binarized"] is True
