"""A model made of registered parts, registered as ``laplace-vae`` in ``genkit.models``: a Preset, no code."""

from genkit import Preset

laplace_vae = Preset(
    "VAE with a learned factorised Laplace prior, trained on the L1 ELBO (genkit's conv encoder and decoder)",
    encoder="conv",  # genkit's own parts and this package's, all by registry name
    decoder="conv",
    prior="laplace",
    loss="elbo-l1",
    # default options of the model and of each part; --set and get_model's options override them
    options={"model": {"latent": 10}, "prior": {"learn_scale": True}},
)
