"""Lossless compression with a VAE by bits-back coding on ANS (BB-ANS, Townsend et al. 2019).

Per image x, on constriction's ANS stack: *decode* a latent z from q(z|x) (taking bits off the stack: the bits
back), encode x under p(x|z), encode z under p(z). Decoding runs the same steps backwards and leaves the stack as
it found it, so the net cost of an image is about -ELBO(x) in bits. The latent is discretised per dimension
into 2^PRECISION buckets of equal mass under N(0, 1), so p(z) is uniform over buckets and q(z|x) a categorical
over them; z is the bucket's prior median. Pixels are coded under the ``logistic`` likelihood's 256-level masses
(of a fixed scale, or the one the decoder predicts for each pixel).

The stack starts from a few fixed words (the first image has nothing to take bits from); decoding checks that
it ends on them, and a sha256 of the pixels in the header checks the whole round trip. The probabilities come
from float networks evaluated again at decode time, one image at a time as when encoding: a file decodes on the
machine type that wrote it; elsewhere a mismatch is caught by the checks and refused, never returned as wrong
pixels.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from genkit.errors import ConfigError, DataError
from genkit.losses import LEVELS, level_edges, logistic_parameters
from genkit.model import Model

MODE = "lossless"
CODER = "constriction ANS stack, bits-back (BB-ANS)"
#: latent buckets per dimension: 2^PRECISION of equal prior mass
PRECISION = 12
#: the stack's starting words (fixed, so a decoder knows them); enough for the first image's latent draw
SEED = 0


def check_model(model: Model, name: str) -> None:
    """Raise ``ConfigError`` unless ``model`` can code losslessly: a Gaussian posterior, the standard normal
    prior and a loss with the ``logistic`` likelihood (a probability for every grey level)."""
    from genkit.priors import StandardNormal

    likelihood = model.likelihood.likelihood
    if not model.posterior_has_density() or not isinstance(model.prior, StandardNormal) or likelihood != "logistic":
        raise ConfigError(
            f"{name} cannot compress losslessly: bits-back coding needs a VAE with a Gaussian posterior, the normal "
            "prior and the logistic likelihood; train one with genkit run vae-conv --latent 32 "
            "--set loss.likelihood=logistic --set loss.sigma=0.09 --set loss.scale=decoded"
        )


def _buckets(device: torch.device) -> tuple[Tensor, Tensor]:
    """Bucket edges (2^P + 1, with -inf and inf) and prior medians (2^P) under N(0, 1), in float64."""
    n = 1 << PRECISION
    quantiles = torch.arange(n + 1, dtype=torch.float64, device=device) / n
    edges = torch.special.ndtri(quantiles)
    centres = torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n)
    return edges, centres


def _posterior_table(model: Model, x: Tensor, edges: Tensor) -> np.ndarray:
    """q(bucket | x), shaped (latent, 2^P), for one image ``x`` (1, C, H, W) in [0, 1]."""
    posterior = model.encode(x)
    mean, std = posterior.mean.double()[0, :, None], (0.5 * posterior.logvar.double()[0, :, None]).exp()
    cdf = torch.special.ndtr((edges - mean) / std)
    return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0).cpu().numpy()


def _pixel_table(model: Model, z: Tensor, edges: Tensor) -> np.ndarray:
    """p(level | z) for every pixel, shaped (pixels, 256): the ``logistic`` likelihood's masses (CDF
    differences in float64; the range coder quantises them far more coarsely than their rounding error)."""
    location, scale = logistic_parameters(model.decode_logits(z), model.likelihood)
    location = location.double().reshape(-1, 1)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=location.device).reshape(-1, 1)  # or one for all
    cdf = torch.sigmoid((edges - location) / scale)
    return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0).cpu().numpy()


def _pixel_edges(device: torch.device) -> Tensor:
    """The 257 bin edges of the grey levels in [0, 1] units, from -inf to inf (float64)."""
    lo, hi = level_edges(torch.arange(LEVELS, dtype=torch.float64, device=device))
    return torch.cat([lo, hi[-1:]])


def _seed_words(latent: int) -> np.ndarray:
    count = latent * PRECISION // 32 + 2
    return np.random.default_rng(SEED).integers(1, 1 << 32, size=count, dtype=np.uint32)


class _Tables:
    """The entropy models of one model's images: q(bucket | x), p(level | z) and the uniform p(bucket)."""

    def __init__(self, model: Model) -> None:
        from genkit.compress import entropy_coder

        self.constriction = entropy_coder()
        self.model = model
        self.categorical = self.constriction.stream.model.Categorical(perfect=False)
        self.uniform = self.constriction.stream.model.Uniform(1 << PRECISION)
        self.edges, self.centres = _buckets(model.device)
        self.pixel_edges = _pixel_edges(model.device)

    def posterior(self, image: Tensor) -> np.ndarray:
        x = image[None].to(self.model.device).float() / (LEVELS - 1)
        return _posterior_table(self.model, x, self.edges)

    def pixels(self, buckets: np.ndarray) -> np.ndarray:
        z = self.centres[torch.from_numpy(buckets.astype(np.int64)).to(self.model.device)].float()[None]
        return _pixel_table(self.model, z, self.pixel_edges)


@torch.no_grad()
def encode(model: Model, images: Sequence[Tensor]) -> np.ndarray:
    """The ANS words of ``images`` (each (C, H, W) in [0, 1], read as 8-bit grey levels, one at a time); they go
    on in reverse so that decoding gives them first to last."""
    tables = _Tables(model)
    coder = tables.constriction.stream.stack.AnsCoder(_seed_words(model.config.latent))
    for i in reversed(range(len(images))):
        image = levels_of(images[i])
        buckets = coder.decode(tables.categorical, tables.posterior(image))  # the bits back
        pixels = image.reshape(-1).numpy().astype(np.int32)
        coder.encode_reverse(pixels, tables.categorical, tables.pixels(buckets))
        coder.encode_reverse(buckets, tables.uniform)
    return coder.get_compressed()


@torch.no_grad()
def decode(model: Model, words: np.ndarray, count: int, shape: tuple[int, ...], name: str) -> Iterator[Tensor]:
    """The images (uint8, one at a time) of ``encode``'s words; ``DataError`` if the stack does not end on the
    seed words (a damaged file, or one made on a machine whose floats differ)."""
    tables = _Tables(model)
    damaged = f"{name} does not decode exactly with this model: the file is damaged or was made elsewhere"
    try:
        coder = tables.constriction.stream.stack.AnsCoder(words.astype(np.uint32))
    except ValueError:  # e.g. ending in a zero word, which no ANS stream does
        raise DataError(damaged) from None
    for _ in range(count):
        buckets = coder.decode(tables.uniform, model.config.latent)
        pixels = coder.decode(tables.categorical, tables.pixels(buckets))
        image = torch.from_numpy(pixels.astype(np.uint8)).view(*shape)
        coder.encode_reverse(buckets, tables.categorical, tables.posterior(image))
        yield image
    if not np.array_equal(coder.get_compressed(), _seed_words(model.config.latent)):
        raise DataError(damaged)


def levels_of(images: Tensor) -> Tensor:
    """8-bit grey levels (uint8) of images in [0, 1]."""
    return torch.round(images * (LEVELS - 1)).clamp(0, LEVELS - 1).to(torch.uint8)


@torch.no_grad()
def elbo_bits(model: Model, images: Iterable[Tensor]) -> float:
    """-ELBO of ``images`` (each (C, H, W), read as 8-bit grey levels, 256 at a time) in bits, summed: the model's
    own estimate of the lossless code length."""
    model.eval()
    total, images = 0.0, iter(images)
    while chunk := [levels_of(image) for image in itertools.islice(images, 256)]:
        x = torch.stack(chunk).to(model.device).float() / (LEVELS - 1)
        out = model.loss(x)
        total += float(out.total) * len(x)
    return total / np.log(2)


def compress(model: Model, images: Sequence[Tensor], model_sha: str) -> bytes:
    """A lossless file's bytes for ``images``: a (N, C, H, W) tensor in [0, 1] or any sequence of (C, H, W) images
    (such as ``ImageFiles``, which reads each file when asked: memory then holds one image), read as 8-bit grey
    levels. The images are read twice: first to last for the checksum, then last to first to code them."""
    from genkit.compress import pack

    digest, shape = hashlib.sha256(), []
    for i in range(len(images)):
        levels = levels_of(images[i])
        digest.update(levels.contiguous().numpy().tobytes())
        shape = shape or list(levels.shape)
    header = {
        "mode": MODE,
        "coder": CODER,
        "model_sha256": model_sha,
        "latent_precision": PRECISION,
        "count": len(images),
        "shape": shape,
        "pixels_sha256": digest.hexdigest(),
    }
    return pack(header, encode(model, images))


def decompress(model: Model, header: dict, words: bytes, name: str) -> Iterator[Tensor]:
    """The images (1, C, H, W) in [0, 1] of a lossless file, one at a time; the pixels' checksum is checked
    when the last one is out (a mismatch is a ``DataError``)."""
    if header.get("latent_precision") != PRECISION:
        bits = header.get("latent_precision")
        raise DataError(f"{name} uses {bits}-bit latent buckets; this genkit uses {PRECISION}: upgrade genkit")
    digest = hashlib.sha256()
    shape = tuple(header["shape"])
    for image in decode(model, np.frombuffer(words, dtype="<u4"), int(header["count"]), shape, name):
        digest.update(image.contiguous().numpy().tobytes())
        yield image[None].float() / (LEVELS - 1)
    if digest.hexdigest() != header.get("pixels_sha256"):
        raise DataError(f"{name} does not decode exactly with this model: the file is damaged or was made elsewhere")
