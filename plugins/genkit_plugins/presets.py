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

rae = Preset(
    "Regularised autoencoder, RAE-L2 (Ghosh et al. 2020): code and decoder-weight penalties; samples via gmm",
    encoder="conv",
    decoder="conv",
    prior="gmm",  # ex-post: fitted to the training codes after the last epoch
    loss="rae",
    options={"encoder": {"head": "deterministic"}},
)

rae_gp = Preset(
    "Regularised autoencoder, RAE-GP (Ghosh et al. 2020): a decoder gradient penalty; samples via gmm",
    encoder="conv",
    decoder="conv",
    prior="gmm",
    loss="rae",
    options={"encoder": {"head": "deterministic"}, "loss": {"regulariser": "gp", "decoder_weight": 1e-2}},
)

info_vae = Preset(
    "InfoVAE (Zhao et al. 2019): the conv VAE with an MMD term matching the aggregate posterior to the prior",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="info-vae",
    options={"model": {"latent": 10}},
)

beta_tcvae = Preset(
    "beta-TCVAE (Chen et al. 2018): the conv VAE with its KL split into MI, total correlation and dim-wise KL",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="beta-tcvae",
    options={"model": {"latent": 10}},
)

vq_vae = Preset(
    "VQ-VAE (van den Oord et al. 2017): a codebook-quantised code; samples via a per-position categorical prior",
    encoder="vq",
    decoder="conv",
    prior="categorical",  # ex-post: fitted to the training codes after the last epoch
    loss="vq",
)

aae = Preset(
    "Adversarial autoencoder (Makhzani et al. 2016): a discriminator, trained by its own optimizer, shapes the codes",
    encoder="conv",
    decoder="conv",
    prior="normal",
    loss="aae",
    options={"encoder": {"head": "deterministic"}},
)

compressor = Preset(
    "Learned image compressor (Ballé et al. 2017): integer codes under a factorised entropy model, rate + λ·MSE",
    encoder="conv",
    decoder="conv",
    prior="factorized",
    loss="rd",
    options={"model": {"latent": 32}, "encoder": {"head": "integer"}},
)
