"""Shared test helpers: fake entry-point distributions on sys.path, the real data folder, tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from genkit import registry

ROOT = Path(__file__).resolve().parents[1]


def write_distribution(site: Path, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
    """Write a minimal installed distribution (modules + .dist-info with entry points) into ``site``, beside the
    module ``conv_base`` (``CONV_BASE``) that fake model plugins may subclass."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "conv_base.py").write_text(textwrap.dedent(CONV_BASE))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


#: A whole-model plugin built from genkit's registered conv parts, for fake plugin distributions to subclass
#: (write it as the module ``conv_base`` beside them).
CONV_BASE = """
    import dataclasses

    import genkit

    @dataclasses.dataclass
    class ConvConfig(genkit.ModelConfig):
        channels: int = genkit.option(32, "channels of the first convolution")
        hidden: int = genkit.option(256, "width of the fully connected layer")

    class ConvVAE(genkit.Model):
        '''The conv VAE as a whole-model plugin.'''

        config_class = ConvConfig
        head = "gaussian"

        def __init__(self, config):
            nets = {"channels": config.channels, "hidden": config.hidden}
            super().__init__(
                config,
                encoder=genkit.get_encoder("conv", config, head=self.head, **nets),
                decoder=genkit.get_decoder("conv", config, **nets),
                prior=genkit.get_prior("normal", dims=config),
                loss=genkit.get_loss("elbo" if self.head == "gaussian" else "reconstruction"),
            )

    class ConvAutoencoder(ConvVAE):
        '''The conv autoencoder as a whole-model plugin.'''

        head = "deterministic"
"""


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Keep tests out of the user's ``~/.cache/genkit`` (plugin listings, FID statistics); subprocesses inherit it."""
    os.environ["GENKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("genkit-cache"))


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A folder on sys.path for fake plugin distributions; registries are refreshed around the test."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    for reg in registry.KINDS.values():
        reg.refresh()
    yield site
    for reg in registry.KINDS.values():
        reg.refresh()
    for name in list(sys.modules):
        if name.startswith("fake_"):
            del sys.modules[name]


@pytest.fixture
def data_dir() -> Path:
    """The folder with MNIST/ and FashionMNIST/ (``GENKIT_DATA_DIR``); tests needing it skip without it."""
    path = os.environ.get("GENKIT_DATA_DIR")
    if not path or not (Path(path) / "MNIST" / "raw").is_dir():
        pytest.skip("set GENKIT_DATA_DIR to a folder holding MNIST/raw (as .ci/run does)")
    return Path(path)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """64 generated 28x28 'images' in [0, 1]: blurred blobs, learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randint(6, 22, (64, 2), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 18.0).unsqueeze(1)


@pytest.fixture
def image_folder(tmp_path, tiny_images) -> Path:
    """A folder of 64 PNG images in two class sub-folders (a user's own dataset)."""
    from torchvision.utils import save_image

    root = tmp_path / "images"
    for i, image in enumerate(tiny_images):
        folder = root / ("left" if i % 2 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        save_image(image, folder / f"{i:03d}.png")
    return root


def pip_install_beside(package: Path, target: Path) -> dict[str, str]:
    """Install ``package`` with pip into ``target`` (genkit stays where it is); the environment of a process
    that has it installed."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(target), str(package)], check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
