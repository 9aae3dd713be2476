"""genkit.fid: the Fréchet distance against independent references, FID on tensors against pytorch-fid on PNGs,
the reference-statistics cache, the one-line error without weights, and a sanity check on MNIST/Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg
from torchvision.utils import save_image

from genkit import DataError, GenkitError, ShapeError
from genkit import fid as gfid

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FAKE_DIMS = 16  # feature size of the stand-in statistics in the cache tests


def random_covariance(d: int, rank: int | None, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def sqrtm_reference(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (called without ``disp``)."""
    covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# --------------------------------------------------------------------------------------------------------------
# Fréchet distance (no network, no weights)


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), random_covariance(32, None, rng)
    assert gfid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    rank_deficient = random_covariance(32, 5, rng)
    assert gfid.frechet_distance(mu, rank_deficient, mu, rank_deficient) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_sqrtm_on_full_rank_gaussians():
    rng = np.random.default_rng(1)
    for d in (1, 3, 50):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_covariance(d, None, rng), random_covariance(d, None, rng)
        got = gfid.frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(sqrtm_reference(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
        # symmetric in its arguments
        assert gfid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    v1, v2 = rng.uniform(0.1, 3.0, 20), rng.uniform(0.0, 3.0, 20)
    v2[:3] = 0.0  # singular is fine
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert gfid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # one dimension by hand: N(0, 1) vs N(1, 4) -> 1 + (1 - 2)^2
    assert gfid.frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0)


def test_frechet_distance_with_fewer_samples_than_dimensions_matches_pytorch_fid():
    """Covariances of 40 samples in 128-d are singular; pytorch-fid's sqrtm route (where scipy still has it)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 128)), rng.standard_normal((40, 128)) * 1.5 + 0.2
    (mu1, s1), (mu2, s2) = gfid.statistics_of_features(a), gfid.statistics_of_features(b)
    got = gfid.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got) and got > 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = calculate_frechet_distance(mu1, s1, mu2, s2)
    except TypeError:  # scipy >= 1.18 rejects pytorch-fid 0.3.0's sqrtm(disp=...): the reason for our method
        expected = sqrtm_reference(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_rejects_mismatched_or_bad_statistics():
    with pytest.raises(ShapeError):
        gfid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(DataError):
        gfid.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------------------------------------------
# Weights: where they go, and the one-line error without them


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """TORCH_HOME at an empty folder; downloading is made to fail the way it does without network."""
    calls: list[str] = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home, calls


def test_missing_weights_give_one_line_error(empty_torch_home):
    home, calls = empty_torch_home
    expected_path = home / "hub" / "checkpoints" / WEIGHTS_NAME
    assert gfid.weights_path() == expected_path
    images = torch.rand(4, 1, 28, 28)
    with pytest.raises(DataError) as info:
        gfid.fid(images, images, device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(expected_path) in message and "TORCH_HOME" in message
    assert calls, "the normal download path should have been tried"
    assert isinstance(info.value, GenkitError)
    assert not expected_path.exists()
    for needs_weights in (gfid.weights_sha256, gfid.protocol):
        with pytest.raises(DataError, match="TORCH_HOME"):
            needs_weights()


def test_weights_are_downloaded_into_the_hub_cache_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **kw: Path(dst).write_bytes(b"weights"))
    path = gfid.ensure_weights(progress=False)
    assert path == tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME and path.read_bytes() == b"weights"
    assert gfid.weights_sha256() == hashlib.sha256(b"weights").hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Reference-statistics cache (feature extraction replaced by a counter; only a stand-in weights file is needed)


@pytest.fixture
def fake_weights(tmp_path, monkeypatch):
    """A stand-in weights file (hashing only) and a counting fake of the feature statistics."""
    home = tmp_path / "torch-home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / WEIGHTS_NAME).write_bytes(b"not really inception")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    calls: list[int] = []

    def fake_statistics(images, device=None, batch_size=50, *, quantize=True, progress=True):
        calls.append(images.shape[0])
        rng = np.random.default_rng(int(images.sum().item() * 1000) % 2**32)
        return rng.standard_normal(FAKE_DIMS), np.diag(rng.uniform(0.5, 1.5, FAKE_DIMS))

    monkeypatch.setattr(gfid, "feature_statistics", fake_statistics)
    return calls


def test_reference_statistics_are_computed_once_and_reused(fake_weights, tmp_path):
    calls, cache = fake_weights, tmp_path / "cache"
    images = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    key = gfid.reference_key("mnist", "test", 10)
    mu, sigma = gfid.reference_statistics(key, images, cache)
    assert calls == [10]
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"mnist-test-10-{gfid.weights_sha256()[:16]}.npz"]
    mu2, sigma2 = gfid.reference_statistics(key, images, cache)
    assert calls == [10], "the second call must read the cache"
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)

    samples = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    value = gfid.fid(samples, images, cache_key=key, cache_dir=cache, progress=False)
    assert calls == [10, 6], "fid() computes the samples' statistics only"
    assert value == pytest.approx(gfid.frechet_distance(*gfid.feature_statistics(samples), mu, sigma))


def test_reference_cache_default_folder_follows_genkit_cache_dir(fake_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("GENKIT_CACHE_DIR", str(tmp_path / "gk"))
    assert gfid.resolve_cache_dir() == tmp_path / "gk" / "fid"
    gfid.reference_statistics("fashion-mnist-test-5", torch.rand(5, 1, 8, 8))
    assert len(list((tmp_path / "gk" / "fid").glob("fashion-mnist-test-5-*.npz"))) == 1
    monkeypatch.delenv("GENKIT_CACHE_DIR")
    assert gfid.resolve_cache_dir() == Path.home() / ".cache" / "genkit" / "fid"


def test_corrupt_or_stale_cache_is_recomputed(fake_weights, tmp_path):
    calls, cache = fake_weights, tmp_path / "cache"
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mu, _ = gfid.reference_statistics("k", images, cache)
    (path,) = cache.iterdir()
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash outside genkit
    mu2, _ = gfid.reference_statistics("k", images, cache)
    assert calls == [8, 8] and np.array_equal(mu, mu2)
    path.write_bytes(b"garbage")
    gfid.reference_statistics("k", images, cache)
    assert len(calls) == 3
    gfid.reference_statistics("k", images, cache)
    assert len(calls) == 3, "the rewritten file is good again"
    # same key, other images (e.g. a different subset): not served from the cache
    gfid.reference_statistics("k", images.flip(0), cache)
    gfid.reference_statistics("k", images[:7], cache)
    assert calls[-2:] == [8, 7]


def test_failed_cache_write_leaves_no_file(fake_weights, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def dies_half_way(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", dies_half_way)
    mu, sigma = gfid.reference_statistics("k", torch.rand(4, 1, 8, 8), cache)
    assert mu.shape == (FAKE_DIMS,) and sigma.shape == (FAKE_DIMS, FAKE_DIMS)
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# With the real InceptionV3 weights


@pytest.fixture
def inception_weights() -> Path:
    path = gfid.weights_path()
    if not path.is_file():
        pytest.skip(
            f"pytorch-fid's InceptionV3 weights are not at {path}: let pytorch-fid download them once "
            "(python -c 'import genkit.fid as f; f.ensure_weights()'), or set TORCH_HOME to a folder holding them"
        )
    return path


def blobs(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Blurred blobs in [0, 1] (colour per image for 3 channels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=g) * (size * 0.6) + size * 0.2
    width = torch.rand(n, 1, 1, generator=g) * size / 3 + 2
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * width**2)).unsqueeze(1)
    colour = torch.rand(n, channels, 1, 1, generator=g) * 0.7 + 0.3
    return (blob * colour).clamp(0, 1)


def test_folding_batch_norms_into_convolutions_keeps_the_function():
    from torchvision.models.inception import BasicConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(BasicConv2d(3, 8, kernel_size=3, stride=2, padding=1), BasicConv2d(8, 4, kernel_size=1))
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # trained-looking statistics
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        expected = net.eval()(x)
        got = gfid._fold_batch_norms(net)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(m.conv.bias is not None for m in net)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fid_on_tensors_equals_pytorch_fid_on_pngs(inception_weights, tmp_path, monkeypatch):
    from pytorch_fid import fid_score

    gray, colour = blobs(100, 1, 28, seed=0), blobs(100, 3, 32, seed=1)
    for name, images in (("gray", gray), ("colour", colour)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            save_image(image, tmp_path / name / f"{i:04d}.png")

    seen = []
    real = fid_score.compute_statistics_of_path

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(fid_score, "compute_statistics_of_path", spy)
    paths = [str(tmp_path / "gray"), str(tmp_path / "colour")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = float(fid_score.calculate_fid_given_paths(paths, 50, "cpu", 2048, num_workers=0))
    except TypeError as exc:  # scipy >= 1.18 rejects sqrtm(disp=...): compare with pytorch-fid's statistics
        if "disp" not in str(exc) or len(seen) != 2:
            raise
        expected = sqrtm_reference(*seen[0], *seen[1])

    got_gray = gfid.feature_statistics(gray, "cpu", 50, progress=False)
    got_colour = gfid.feature_statistics(colour, "cpu", 50, progress=False)
    for (mu, sigma), (ref_mu, ref_sigma) in zip((got_gray, got_colour), seen, strict=True):
        np.testing.assert_allclose(mu, ref_mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-3, atol=1e-5)
    got = gfid.frechet_distance(*got_gray, *got_colour)
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=0.01)


def test_protocol_records_the_measurement(inception_weights):
    record = gfid.protocol()
    assert record["implementation"] == "pytorch-fid InceptionV3 pool3 2048-d"
    assert record["pytorch_fid_version"] == metadata.version("pytorch-fid")
    assert record["weights_sha256"] == hashlib.sha256(inception_weights.read_bytes()).hexdigest()
    assert record["channels"] == "grayscale repeated to 3 channels"
    assert "299" in record["resize"]


def test_bad_images_are_rejected(inception_weights):
    ok = torch.rand(4, 1, 28, 28)
    with pytest.raises(ShapeError):
        gfid.fid(torch.rand(4, 28, 28), ok, progress=False)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        gfid.fid(ok * 4 - 2, ok, progress=False)
    with pytest.raises(DataError, match="at least 2"):
        gfid.fid(ok[:1], ok, progress=False)


# --------------------------------------------------------------------------------------------------------------
# Data sanity: same-distribution halves are close, MNIST vs Fashion-MNIST is far


def read_idx_images(path: Path, count: int) -> torch.Tensor:
    """The first ``count`` images of a gzipped IDX file as (N, 1, H, W) floats in [0, 1] (read-only access)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    images = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)[:count]
    return torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)


def test_fid_sanity_on_mnist_and_fashion_mnist(inception_weights, data_dir):
    fashion_path = data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    if not fashion_path.is_file():
        pytest.skip(f"Fashion-MNIST test images missing at {fashion_path}")
    before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
    mnist = read_idx_images(data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", 400)
    fashion = read_idx_images(fashion_path, 200)

    even = gfid.feature_statistics(mnist[0::2], "cpu", 50, progress=False)
    odd = gfid.feature_statistics(mnist[1::2], "cpu", 50, progress=False)
    other = gfid.feature_statistics(fashion, "cpu", 50, progress=False)
    same = gfid.frechet_distance(*even, *odd)
    different = gfid.frechet_distance(*even, *other)
    # 200 vs 200 measured 33.1 and 220.8 (5000 vs 5000: 2.49 and 176.6; small samples bias FID upwards).
    assert 0 < same < 60
    assert different > 100
    assert same < 0.25 * different
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == before, "the data folder must not change"
