"""Sample FID with pytorch-fid's InceptionV3 (pool3, 2048-d), computed from image tensors.

The measurement matches ``pytorch_fid.fid_score.calculate_fid_given_paths`` on the same images saved as 8-bit
PNG: images in [0, 1] are rounded to 8-bit levels (as ``torchvision.utils.save_image`` does), grayscale is
repeated to 3 channels (as PIL's ``convert("RGB")`` does), and InceptionV3 itself resizes bilinearly to 299x299
and scales to [-1, 1]. Statistics are the feature mean and unbiased covariance in float64.

Only the Fréchet distance differs in method (not in value): pytorch-fid 0.3.0 calls ``scipy.linalg.sqrtm`` with
``disp=``, which newer scipy rejects; ``frechet_distance`` uses symmetric eigendecompositions instead.

The InceptionV3 weights (``pt_inception-2015-12-05-6726825d.pth``) live in the torch hub cache,
``$TORCH_HOME/hub/checkpoints/``. They are downloaded once if missing; without network access a
``genkit.errors.DataError`` says where the file must go. No number is ever returned without them.

Reference statistics (e.g. of a test split) are cached on disk under ``$GENKIT_CACHE_DIR/fid`` (default
``~/.cache/genkit/fid``), keyed by the caller's key (dataset, split, count), the weights' sha256 and a
fingerprint of the images.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm.auto import tqdm

from genkit.errors import DataError, ShapeError
from genkit.files import cache_root

#: Feature dimension of InceptionV3's final average pool (pool3).
DIMS = 2048
#: Version of the on-disk layout of cached reference statistics.
_CACHE_FORMAT = 1

_sha_cache: dict[tuple[str, int, int], str] = {}
_extractors: dict[tuple[str, str, bool], InceptionFeatures] = {}


# --------------------------------------------------------------------------------------------------------------
# Fréchet distance


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ||mu1 - mu2||² + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^½).

    The trace term is computed without a (non-symmetric) matrix square root: sigma1 sigma2 is similar to the
    symmetric positive semi-definite matrix M = sigma1^½ sigma2 sigma1^½, so
    Tr((sigma1 sigma2)^½) = Σ sqrt(λ_i(M)). sigma1^½ comes from a symmetric eigendecomposition of sigma1 and
    λ(M) from ``scipy.linalg.eigh`` (LAPACK ``syevd``), all in float64, with round-off negatives (of either matrix's
    eigenvalues) clipped to 0. This is exact for PSD covariances, needs no ``eps`` offset for the singular
    covariances of fewer samples than dimensions, and never yields an imaginary part. The result is clipped
    at 0 (round-off can make identical statistics come out at -1e-12).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ShapeError(
            f"Fréchet distance needs two means of shape (d,) and covariances (d, d); got "
            f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise DataError("Fréchet distance: the statistics contain NaN or infinite values")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    w, v = linalg.eigh(s1, driver="evd", check_finite=False)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ s2 @ root1
    lam = linalg.eigh(0.5 * (m + m.T), eigvals_only=True, driver="evd", check_finite=False)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


# --------------------------------------------------------------------------------------------------------------
# Weights


def _weights_url() -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return FID_WEIGHTS_URL


def weights_path() -> Path:
    """Where pytorch-fid loads its InceptionV3 weights from: ``<torch hub dir>/checkpoints/<file>``.

    The hub dir is ``$TORCH_HOME/hub`` (``TORCH_HOME`` defaults to ``~/.cache/torch``).
    """
    name = _weights_url().rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def ensure_weights(progress: bool = True) -> Path:
    """The weights file, downloaded into the torch hub cache if missing; a one-line ``DataError`` if that fails."""
    path = weights_path()
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(_weights_url(), str(path), progress=progress)
    except Exception as exc:  # no network, proxy, read-only cache, interrupted download...
        raise DataError(
            f"FID needs pytorch-fid's InceptionV3 weights at {path} and downloading them failed "
            f"({type(exc).__name__}: {_one_line(exc)}); copy {path.name} there, or set TORCH_HOME to a folder "
            "whose hub/checkpoints/ holds it"
        ) from None
    if not path.is_file():
        raise DataError(f"FID weights download did not produce {path}; copy {path.name} there or set TORCH_HOME")
    return path


def weights_sha256() -> str:
    """sha256 of the InceptionV3 weights file (computed once per file and cached in memory)."""
    path = ensure_weights()
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def pytorch_fid_version() -> str:
    try:
        return metadata.version("pytorch-fid")
    except metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        return "unknown"


def protocol(quantize: bool = True) -> dict[str, Any]:
    """A description of the FID measurement, to store beside reported numbers."""
    return {
        "metric": "FID (Fréchet Inception Distance)",
        "implementation": f"pytorch-fid InceptionV3 pool3 {DIMS}-d",
        "pytorch_fid_version": pytorch_fid_version(),
        "torch_version": torch.__version__,
        "weights_file": weights_path().name,
        "weights_sha256": weights_sha256(),
        "input_range": "[0, 1], scaled to [-1, 1] inside InceptionV3",
        "quantization": "rounded to 8-bit levels, as when saved as PNG" if quantize else "none (float input)",
        "channels": "grayscale repeated to 3 channels",
        "resize": "bilinear to 299x299 inside InceptionV3 (align_corners=False)",
        "statistics": "feature mean and unbiased covariance (numpy.cov), float64",
        "frechet_distance": "trace term as sum of sqrt of eigenvalues of sqrt(S1) S2 sqrt(S1), float64",
        "reference_cache": "keyed by dataset, split, count, weights sha256 and an images fingerprint",
    }


# --------------------------------------------------------------------------------------------------------------
# Features


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ShapeError(f"FID needs images shaped (N, 1 or 3, H, W) in [0, 1]; got {shape}")
    if images.shape[0] < 2:
        raise DataError(f"FID needs at least 2 images per side to estimate a covariance; got {images.shape[0]}")
    if images.numel() and not torch.isfinite(images).all():
        raise DataError("FID images contain NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(f"FID needs images in [0, 1] (e.g. sigmoid of the decoder's logits); got [{lo:.3g}, {hi:.3g}]")


class InceptionFeatures:
    """pytorch-fid's InceptionV3 pool3 features of [0, 1] image tensors, as float64 numpy (N, 2048).

    ``quantize`` rounds inputs to 8-bit levels first, so that features equal those of the same images saved as
    PNG and read by pytorch-fid. Grayscale is repeated to 3 channels; the network resizes to 299 itself.
    """

    def __init__(
        self, device: torch.device | str = "cpu", batch_size: int = 50, quantize: bool = True, progress: bool = True
    ) -> None:
        from pytorch_fid.inception import InceptionV3

        if batch_size < 1:
            raise DataError(f"FID batch size must be at least 1, got {batch_size}")
        path = ensure_weights(progress)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.quantize = quantize
        self.progress = progress
        try:
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]])
        except Exception as exc:  # a truncated or foreign file in the hub cache
            raise DataError(
                f"FID weights {path} are unreadable ({type(exc).__name__}: {_one_line(exc)}); delete the file "
                "to download it again, or set TORCH_HOME to a folder whose hub/checkpoints/ holds a good copy"
            ) from None
        # channels-last convolutions: 1.6x faster on a CPU here, features equal to 1e-5; folded batch norms: 1.1x more
        self.net = _fold_batch_norms(net.eval()).to(self.device, memory_format=torch.channels_last)

    def prepare(self, batch: Tensor) -> Tensor:
        """A batch as the network takes it: float32 on the device, 3 channels, 8-bit levels if ``quantize``."""
        x = batch.to(self.device, torch.float32)
        if self.quantize:
            # torchvision.utils.save_image: mul(255).add_(0.5).clamp_(0, 255).to(uint8); ToTensor divides by 255.
            x = x.mul(255).add_(0.5).clamp_(0, 255).floor_().div_(255)
        else:
            x = x.clamp(0, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        _check_images(images)
        out = np.empty((images.shape[0], DIMS), dtype=np.float64)
        starts = range(0, images.shape[0], self.batch_size)
        for start in tqdm(starts, desc="FID features", unit="batch", disable=not self.progress, leave=False):
            batch = self.prepare(images[start : start + self.batch_size])
            pred = self.net(batch)[0]
            out[start : start + batch.shape[0]] = pred.reshape(batch.shape[0], DIMS).double().cpu().numpy()
        return out


def _fold_batch_norms(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (in eval mode) with each convolution block's batch norm folded into its convolution's weights and
    bias: the same function, one pass less over every activation. Features agree with the unfolded net's to 1e-5.
    """
    for block in net.modules():  # InceptionV3's BasicConv2d: relu(bn(conv(x)))
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and bn.running_var is not None:
            block.conv, block.bn = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return net


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _extractor(device: torch.device | str | None, batch_size: int, quantize: bool, progress: bool) -> InceptionFeatures:
    """A cached ``InceptionFeatures`` (the network is built once per weights file, device and quantize flag)."""
    dev = torch.device(device) if device is not None else _default_device()
    key = (str(ensure_weights(progress)), str(dev), quantize)
    if key not in _extractors:
        _extractors.clear()  # keep at most one network in memory
        _extractors[key] = InceptionFeatures(dev, batch_size, quantize, progress)
    extractor = _extractors[key]
    extractor.batch_size, extractor.progress = batch_size, progress
    return extractor


def statistics_of_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (as pytorch-fid computes them) of (N, d) features."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def feature_statistics(
    images: Tensor,
    device: torch.device | str | None = None,
    batch_size: int = 50,
    *,
    quantize: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the InceptionV3 pool3 features of ``images`` (N, C, H, W) in [0, 1]."""
    _check_images(images)
    return statistics_of_features(_extractor(device, batch_size, quantize, progress)(images))


# --------------------------------------------------------------------------------------------------------------
# Reference statistics cache


def resolve_cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The FID statistics cache: ``path``, else ``$GENKIT_CACHE_DIR/fid``, else ``~/.cache/genkit/fid``."""
    if path is not None:
        return Path(path).expanduser()
    return cache_root() / "fid"


def reference_key(dataset: str, split: str, count: int) -> str:
    """The cache key of a dataset split's first ``count`` images (the weights hash is added by the cache)."""
    return f"{dataset}-{split}-{count}"


def _images_fingerprint(images: Tensor) -> str:
    data = images.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def cache_path(key: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The .npz file holding the reference statistics cached under ``key`` for the current weights."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "stats"
    return resolve_cache_dir(directory) / f"{safe}-{weights_sha256()[:16]}.npz"


def _read_cache(path: Path, expect: dict[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Statistics from a cache file, or None when it is missing, damaged or made for something else."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = {name: str(f[name]) for name in expect}
            mu, sigma = np.asarray(f["mu"], dtype=np.float64), np.asarray(f["sigma"], dtype=np.float64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if meta != expect or mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        return None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return None
    return mu, sigma


def reference_statistics(
    key: str,
    images: Tensor,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 50,
    quantize: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of reference ``images``, read from the disk cache or computed once and cached.

    ``key`` names the images, e.g. ``reference_key`` ``("mnist", "test", 10000)``; the file name adds the
    weights' sha256. A file whose key, weights, images fingerprint or quantize flag differ, or which is damaged,
    is recomputed and replaced. Files are written to a temporary name and renamed, never left half-written.
    """
    from genkit.checkpoint import atomic_write

    _check_images(images)
    path = cache_path(key, cache_dir)
    expect = {
        "format": str(_CACHE_FORMAT),
        "key": key,
        "weights_sha256": weights_sha256(),
        "images_sha256": _images_fingerprint(images),
        "quantize": str(bool(quantize)),
    }
    cached = _read_cache(path, expect)
    if cached is not None:
        return cached
    mu, sigma = feature_statistics(images, device, batch_size, quantize=quantize, progress=progress)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f, mu=mu, sigma=sigma, count=np.int64(images.shape[0]), **{k: np.str_(v) for k, v in expect.items()}
            )

    try:
        atomic_write(path, write)
    except OSError as exc:  # an unwritable cache costs time, not the result
        print(f"FID: could not cache reference statistics at {path} ({_one_line(exc)})")
    return mu, sigma


# --------------------------------------------------------------------------------------------------------------
# FID


def fid(
    samples: Tensor,
    reference_images: Tensor,
    device: torch.device | str | None = None,
    batch_size: int = 50,
    cache_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    quantize: bool = True,
    progress: bool = True,
) -> float:
    """FID between ``samples`` and ``reference_images`` (each (N, C, H, W) in [0, 1]; N may differ).

    With ``cache_key`` (see ``reference_key``) the reference statistics are cached on disk. ``device``
    defaults to CUDA when available. Use the same number of samples as reported elsewhere: FID is biased
    upwards for small N.
    """
    mu1, sigma1 = feature_statistics(samples, device, batch_size, quantize=quantize, progress=progress)
    if cache_key is None:
        mu2, sigma2 = feature_statistics(reference_images, device, batch_size, quantize=quantize, progress=progress)
    else:
        mu2, sigma2 = reference_statistics(
            cache_key,
            reference_images,
            cache_dir,
            device=device,
            batch_size=batch_size,
            quantize=quantize,
            progress=progress,
        )
    return frechet_distance(mu1, sigma1, mu2, sigma2)
