"""Vector quantisation: nearest-codebook codes with straight-through gradients, EMA updates, code-index priors."""

import math

import pytest
import torch

import genkit

X = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def vq_model(**options) -> genkit.Model:
    torch.manual_seed(0)
    return genkit.get_model("vq-vae", latent=8, channels=8, hidden=32, **options)


def test_codes_are_the_nearest_codebook_vectors_with_straight_through_gradients():
    model = vq_model(codebook=16)
    posterior = model.encode(X)
    pieces = posterior.latent.detach().reshape(-1, 2)
    book = model.encoder.codebook.detach()
    nearest = torch.cdist(pieces, book).argmin(1)
    assert torch.equal(posterior.indices.reshape(-1), nearest)
    torch.testing.assert_close(posterior.mean.detach(), book[nearest].reshape(8, 8))  # the quantised code's value
    with torch.no_grad():  # exactly, when no gradient is wanted
        assert torch.equal(model.encode(X).mean, book[nearest].reshape(8, 8))
    assert posterior.indices.shape == (8, 4) and not posterior.has_density
    posterior.mean.sum().backward()  # straight through: the encoder learns, the codebook does not, from the code
    assert model.encoder.head.weight.grad.abs().sum() > 0 and model.encoder.codebook.grad is None
    terms = model.loss(X, generator=torch.Generator().manual_seed(0)).terms
    assert set(terms) == {"reconstruction", "commitment", "codebook"}
    terms["codebook"].backward()
    assert model.encoder.codebook.grad.abs().sum() > 0


def test_ema_moves_used_codebook_vectors_towards_their_codes():
    model = vq_model(codebook=16, ema=True, decay=0.5).train()
    encoder = model.encoder
    assert not encoder.codebook.requires_grad
    encoder(X)  # the first training batch sets the codebook from its codes
    before = encoder.codebook.detach().clone()
    posterior = encoder(X)
    used = posterior.indices.unique()
    pieces = posterior.latent.detach().reshape(-1, 2)
    for k in used.tolist():
        mine = pieces[posterior.indices.reshape(-1) == k].mean(0)
        assert (encoder.codebook[k] - mine).norm() < (before[k] - mine).norm()  # closer to its codes' mean
    unused = torch.ones(16, dtype=torch.bool)
    unused[used] = False
    assert torch.allclose(encoder.codebook[unused], before[unused], atol=1e-4)
    assert "codebook" not in model.loss(X, generator=torch.Generator().manual_seed(0)).terms


def test_categorical_prior_learns_per_position_frequencies():
    prior = genkit.get_prior("categorical", latent=4, codebook=4, code_dim=2)
    with pytest.raises(genkit.ConfigError, match="not fitted"):
        prior.sample(2)
    a, b, c = [0.0, 0.0], [1.0, 1.0], [2.0, -1.0]
    # position 0: a three times, b once; position 1: always c
    codes = torch.tensor([[*a, *c], [*a, *c], [*a, *c], [*b, *c]])
    prior.fit(codes)
    mass = prior.log_mass(torch.tensor([[*a, *c], [*b, *c], [0.9, 1.1, 2.1, -0.9]]))
    s = prior.config.smoothing
    p_a, p_b = (3 + s) / (4 + 3 * s), (1 + s) / (4 + 3 * s)  # three vectors seen: each gets the smoothing
    p_c = (4 + s) / (4 + 3 * s)
    expected = torch.tensor([math.log(p_a * p_c), math.log(p_b * p_c), math.log(p_b * p_c)])
    torch.testing.assert_close(mass, expected)
    z = prior.sample(4000, torch.Generator().manual_seed(0))
    assert set(map(tuple, z[:, :2].tolist())) <= {tuple(a), tuple(b), tuple(c)}
    assert (z[:, :2] == torch.tensor(a)).all(1).float().mean() == pytest.approx(p_a, abs=0.03)
    with pytest.raises(genkit.ConfigError, match="more than codebook=4"):
        prior.fit(torch.randn(10, 4))


def test_autoregressive_prior_learns_what_one_position_says_about_the_next():
    options = {"codebook": 4, "code_dim": 2, "train_steps": 200, "lr": 3e-3, "width": 32, "heads": 2, "layers": 1}
    prior = genkit.get_prior("autoregressive", latent=4, **options)
    with pytest.raises(genkit.ConfigError, match="autoregressive prior is not fitted"):
        prior.sample(2)
    a, b, c = [0.0, 0.0], [1.0, 1.0], [2.0, -1.0]
    # the second position follows the first: after a always c, after b always a
    prior.fit(torch.tensor([[*a, *c]] * 3 + [[*b, *a]]).repeat(50, 1))
    mass = prior.log_mass(torch.tensor([[*a, *c], [*b, *a], [*a, *a], [*b, *c]])).exp()
    assert mass[:2].tolist() == pytest.approx([0.75, 0.25], abs=0.05)
    assert mass[2:].max() < 0.02  # pairs never seen, which a per-position categorical gives 3/16 and 1/16
    z = prior.sample(1000, torch.Generator().manual_seed(0))
    seen = (z == torch.tensor([*a, *c])).all(1) | (z == torch.tensor([*b, *a])).all(1)
    assert seen.float().mean() > 0.95
    with pytest.raises(genkit.ConfigError, match="heads \\(3\\) must divide width \\(32\\)"):
        genkit.get_prior("autoregressive", latent=4, width=32, heads=3)


def test_the_autoregressive_fit_stops_once_the_held_out_codes_stop_improving():
    from genkit_plugins.vq import CHECK_EVERY

    # four independent, uniform positions over eight vectors: nothing to learn beyond the marginals, so the
    # held-out NLL soon stops falling, and the weights kept are those of its best check: close to log 8 per position
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(8, (400, 4), generator=generator).float()
    options = {"codebook": 8, "code_dim": 1, "width": 16, "heads": 2, "layers": 1, "lr": 3e-3, "batch_size": 64}
    prior = genkit.get_prior("autoregressive", latent=4, train_steps=5000, patience=2, **options)
    prior.fit(codes)
    assert 2 * CHECK_EVERY < prior.fit_steps < 5000
    fresh = torch.randint(8, (4000, 4), generator=generator).float()
    assert (-prior.log_mass(fresh).mean() / 4).item() == pytest.approx(math.log(8), abs=0.05)
    every_step = genkit.get_prior("autoregressive", latent=4, train_steps=120, patience=0, **options)
    every_step.fit(codes)
    assert every_step.fit_steps == 120
    with pytest.raises(genkit.ConfigError, match=r"holdout \(0.5\) must be below 0.5"):
        genkit.get_prior("autoregressive", latent=4, holdout=0.5)


def test_a_vq_vae_trains_and_samples_from_its_fitted_prior(tiny_images):
    from genkit.data import ImageData
    from genkit.priors import fit_prior
    from genkit.train import TrainConfig, Trainer

    model = vq_model(codebook=32)
    data = ImageData(tiny_images, torch.zeros(64, dtype=torch.long))
    trainer = Trainer(model, TrainConfig(epochs=6, batch_size=16, progress=False, device="cpu", lr=3e-3))
    history = trainer.fit(data)
    assert history[-1]["train_reconstruction"] < history[0]["train_reconstruction"]
    for prior, options in [("categorical", {}), ("autoregressive", {"train_steps": 20, "width": 16})]:
        fit_prior(model, prior, tiny_images, codebook=32, **options)
        samples = model.sample(5, torch.Generator().manual_seed(0))
        assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_the_prior_and_encoder_must_agree_and_vq_needs_a_quantising_encoder():
    with pytest.raises(genkit.ConfigError, match="disagree on codebook"):
        genkit.get_model("vq-vae", latent=8, **{"encoder.codebook": 64})
    model = genkit.get_model("vq-vae", latent=8, codebook=64)  # a plain key sets both
    assert model.encoder.config.codebook == model.prior.config.codebook == 64
    with pytest.raises(genkit.ConfigError, match="needs a quantising encoder"):
        genkit.get_model("vae-conv", loss="vq", prior="normal")
    with pytest.raises(genkit.ConfigError, match="multiple of code_dim"):
        genkit.get_model("vq-vae", latent=7)
