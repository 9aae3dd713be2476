import pytest
import torch

import genkit
from genkit import registry

NOISE = registry.noise.names()


def test_builtin_noise_plugins_are_registered():
    assert {"gaussian", "salt-pepper", "masking", "speckle"} <= set(NOISE)


@pytest.mark.parametrize("name", NOISE)
def test_noise_keeps_shape_range_device_and_changes_pixels(name):
    x = torch.rand(8, 1, 28, 28)
    before = x.clone()
    noise = genkit.get_noise(f"{name}:0.3")
    y = noise(x, genkit.seeded_generator(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(x, y)
    assert torch.equal(x, before), "the input must not be modified in place"


@pytest.mark.parametrize("name", NOISE)
def test_noise_is_reproducible_with_a_seed(name):
    x = torch.rand(4, 3, 16, 16)
    noise = genkit.get_noise(f"{name}:0.5")
    a, b = noise(x, genkit.seeded_generator(7)), noise(x, genkit.seeded_generator(7))
    c = noise(x, genkit.seeded_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NOISE)
def test_zero_level_is_identity(name):
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(genkit.get_noise(f"{name}:0")(x, genkit.seeded_generator(0)), x)


def test_noise_statistics():
    x = torch.full((64, 1, 32, 32), 0.5)
    g = genkit.seeded_generator(0)
    gaussian = genkit.get_noise("gaussian:0.1")(x, g) - x
    assert gaussian.std().item() == pytest.approx(0.1, rel=0.05)
    hit = genkit.get_noise("salt-pepper:0.2")(x, g) != 0.5
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
    dropped = genkit.get_noise("masking:0.5")(x, g) == 0
    assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NOISE)
def test_noise_on_gpu_stays_on_gpu(name):
    x = torch.rand(4, 1, 8, 8, device="cuda")
    y = genkit.get_noise(f"{name}:0.3")(x, genkit.seeded_generator(0, "cuda"))
    assert y.device == x.device
