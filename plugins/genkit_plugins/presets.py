"""Built-in models as presets: named compositions of registered parts with default options."""

from __future__ import annotations

from genkit import Preset

ae = Preset(
    "Deterministic convolutional autoencoder (reconstruction loss only; sample with a fitted prior such as gmm)",
    encoder="conv",
    decoder="conv",
    prior="normal",  # only a placeholder for sampling: fit `gmm` for real samples
    loss="reconstruction",
    options={"encoder": {"head": "deterministic"}},
)

vae_conv = Preset(
    "Convolutional VAE: conv encoder -> (mu, log var) -> reparameterised z -> transposed-conv decoder",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="elbo",
    options={"model": {"latent": 10}},
)

beta_vae = Preset(
    "beta-VAE: the convolutional VAE with a beta weight on the KL term (disentangling, smoother latents)",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="elbo",
    options={"model": {"latent": 10}, "loss": {"beta": 4.0}},
)

iwae = Preset(
    "Importance-weighted autoencoder (Burda et al. 2016): the conv VAE trained on the k-sample bound",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="iwae",
    options={"model": {"latent": 10}, "loss": {"k": 5}},
)

wae = Preset(
    "Wasserstein autoencoder, MMD variant (Tolstikhin et al. 2018): deterministic codes matched to N(0, I)",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="wae-mmd",
    options={"encoder": {"head": "deterministic"}},
)

vamp_vae = Preset(
    "VAE with a VampPrior (Tomczak & Welling 2018): the prior is a mixture of posteriors at learned pseudo-inputs",
    encoder="conv",
    decoder="conv",
    prior="vamp",
    loss="elbo",
    options={"model": {"latent": 10}, "prior": {"components": 50}},
)
