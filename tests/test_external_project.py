"""genkit used as a library by another project, and ``genkit.checkpoint.save_run``, the helper such a project uses.

The other project is written into a temporary folder with its own ``pyproject.toml`` (depending on genkit) and one
module, installed with pip into a folder of its own, and run by the current interpreter (which has genkit) in a
subprocess started outside genkit's checkout. Its module imports only ``genkit`` and public submodules shown in
the docs: it builds a model by name, trains it on its own tensors with the common trainer, samples, encodes and
decodes, scores MSE/PSNR, saves the model with ``save_run`` and reloads it with ``load_model``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

import genkit
from genkit import registry
from genkit.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, read_json, save_run
from genkit.errors import ConfigError, PluginError, RunExistsError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "blob-lab"
version = "0.2.0"
description = "A project that uses genkit as a library."
requires-python = ">=3.10"
dependencies = ["genkit"]

[tool.setuptools]
py-modules = ["blob_lab"]
"""

MODULE = '''\
"""blob_lab: train a genkit VAE on generated blobs, then sample, encode, decode, score, save and reload it."""

import json
import sys
from pathlib import Path

import torch

import genkit
from genkit import metrics
from genkit.checkpoint import load_model, save_run
from genkit.data import ImageData
from genkit.train import TrainConfig, Trainer


def blobs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(6, 22, (n, 2), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 18.0).unsqueeze(1)


def main(out: str) -> dict:
    torch.manual_seed(0)
    train = ImageData(blobs(256, seed=1), torch.zeros(256, dtype=torch.long))
    test = ImageData(blobs(64, seed=2), torch.zeros(64, dtype=torch.long))

    model = genkit.get_model("vae-conv", latent=6, channels=8, hidden=64)
    mse_untrained = metrics.mse(model.reconstruct(test.images), test.images)

    config = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=0, device="cpu", progress=False)
    trainer = Trainer(model, config)
    history = trainer.fit(train, test)
    model.eval()

    samples = model.sample(9, generator=genkit.seeded_generator(0))
    codes = model.encode(test.images).mean
    decoded = model.decode(codes)
    scores = trainer.evaluate(test, genkit.get_noise("gaussian:0.5"))

    folder = save_run(model, Path(out) / "blob-vae")
    again = load_model(folder)
    result = {
        "genkit": genkit.__version__,
        "epochs": [r["epoch"] for r in history],
        "train_loss": [r["train_loss"] for r in history],
        "sample_shape": list(samples.shape),
        "sample_range": [samples.min().item(), samples.max().item()],
        "code_shape": list(codes.shape),
        "decoded_shape": list(decoded.shape),
        "all_finite": bool(torch.isfinite(samples).all() and torch.isfinite(codes).all()),
        "mse_untrained": mse_untrained,
        "mse": metrics.mse(decoded, test.images),
        "psnr": metrics.psnr(decoded, test.images),
        "evaluate": scores,
        "folder": str(folder),
        "files": sorted(p.name for p in folder.iterdir()),
        "reloaded_name": again.name,
        "reloaded_latent": again.config.latent,
        "same_weights": all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
        ),
        # Equal weights, outputs equal to float rounding: the trainer keeps convolution weights channels-last,
        # a reloaded model has the default layout, and the two layouts run different convolution kernels.
        "same_codes": torch.allclose(again.encode(test.images).mean, codes, rtol=1e-5, atol=1e-6),
        "same_decoding": torch.allclose(again.decode(codes), decoded, rtol=1e-5, atol=1e-6),
        "same_samples": torch.allclose(again.sample(9, generator=genkit.seeded_generator(0)), samples, atol=1e-6),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
'''


@pytest.fixture(scope="module")
def installed_project(tmp_path_factory):
    """The other project, installed with pip into a folder of its own."""
    source = tmp_path_factory.mktemp("blob-lab")
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "blob_lab.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True)
    return target


@pytest.mark.slow
def test_other_project_is_installed_with_its_dependency_on_genkit(installed_project):
    dist = next(metadata.distributions(path=[str(installed_project)]))
    assert dist.metadata["Name"] == "blob-lab"
    assert dist.requires == ["genkit"]
    assert (installed_project / "blob_lab.py").is_file()


@pytest.mark.slow
def test_other_project_trains_samples_scores_saves_and_reloads(installed_project, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_project), os.environ.get("PYTHONPATH", "")])}
    work = tmp_path / "work"  # outside genkit's checkout: genkit comes from the environment, blob_lab from pip
    work.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "blob_lab", str(work)], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["genkit"] == genkit.__version__
    assert result["epochs"] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in result["train_loss"])
    assert result["train_loss"][-1] < result["train_loss"][0]
    assert result["sample_shape"] == [9, 1, 28, 28]
    assert 0 <= result["sample_range"][0] <= result["sample_range"][1] <= 1
    assert result["code_shape"] == [64, 6]
    assert result["decoded_shape"] == [64, 1, 28, 28]
    assert result["all_finite"]

    # Training helped, and the metrics agree with each other and with the trainer's own evaluation.
    assert 0 < result["mse"] < result["mse_untrained"]
    assert result["psnr"] >= 10 * math.log10(1 / result["mse"]) - 1e-6  # mean of per-image PSNRs >= PSNR of mean
    assert result["evaluate"]["mse"] == pytest.approx(result["mse"], rel=1e-5)
    assert all(math.isfinite(result["evaluate"][k]) for k in ("loss", "psnr_noisy", "psnr_denoised"))

    # The saved folder reloads to the same model.
    assert result["files"] == [CONFIG_FILE, WEIGHTS_FILE]
    assert result["reloaded_name"] == "vae-conv" and result["reloaded_latent"] == 6
    assert result["same_weights"] and result["same_codes"] and result["same_decoding"] and result["same_samples"]
    config = read_json(work / "blob-vae" / CONFIG_FILE)
    assert config["model"] == "vae-conv" and config["format"] == 3
    assert config["model_config"] == {"latent": 6, "image_size": 28, "image_channels": 1}
    nets = {"channels": 8, "hidden": 64, "blocks": 0, "stages": 0}
    assert config["parts"] == {
        "encoder": {"name": "conv", "options": {**nets, "head": "gaussian"}},
        "decoder": {"name": "conv", "options": nets},
        "prior": {"name": "normal", "options": {}},
        "loss": {
            "name": "elbo",
            "options": {
                "likelihood": "bernoulli",
                "sigma": 0.1,
                "margin": 0.3,
                "scale": "fixed",
                "beta": 1.0,
                "kl_warmup": 0,
            },
        },
    }


# -- save_run ---------------------------------------------------------------------------------------------------


def _small() -> genkit.Model:
    torch.manual_seed(0)
    return genkit.get_model("vae-conv", latent=3, channels=4, hidden=16)


def test_save_run_round_trip(tmp_path):
    model = _small()
    folder = save_run(model, tmp_path / "a" / "run")  # missing parents are created
    assert folder == tmp_path / "a" / "run"
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary files left
    again = load_model(str(folder))
    assert again.name == "vae-conv" and again.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(again.reconstruct(x), model.eval().reconstruct(x))
    assert read_json(folder / CONFIG_FILE)["genkit_version"] == genkit.__version__


def test_save_run_refuses_to_overwrite_unless_asked(tmp_path):
    model = _small()
    save_run(model, tmp_path)
    with pytest.raises(RunExistsError, match=r"already holds config\.json and model\.safetensors"):
        save_run(model, tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_run(model, tmp_path, overwrite=True)
    assert torch.equal(next(load_model(tmp_path).parameters()), next(model.parameters()))
    (tmp_path / "file").write_text("")
    with pytest.raises(RunExistsError, match="is not a folder"):
        save_run(model, tmp_path / "file")


def test_save_run_needs_a_registry_name(tmp_path):
    model = _small()
    model.name = ""
    with pytest.raises(ConfigError, match=r"genkit\.get_model"):
        save_run(model, tmp_path)
    model.name = "no-such-model"
    with pytest.raises(PluginError, match="unknown models plugin 'no-such-model'"):
        save_run(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_save_run_records_a_prior_by_name(tmp_path):
    model = _small()
    save_run(model, tmp_path / "normal", prior="normal")
    assert read_json(tmp_path / "normal" / CONFIG_FILE)["parts"]["prior"] == {"name": "normal", "options": {}}
    assert type(load_model(tmp_path / "normal").prior) is type(model.prior)


def test_save_run_refuses_a_prior_name_that_does_not_match(tmp_path):
    class UniformPrior(genkit.Prior):
        """U(-1, 1) latents (only its class matters here)."""

    registry.priors.register("test-uniform", UniformPrior)
    try:
        with pytest.raises(ConfigError, match="does not match the model's prior"):
            save_run(_small(), tmp_path, prior="test-uniform")
    finally:
        registry.priors.unregister("test-uniform")
    with pytest.raises(PluginError, match="unknown priors plugin"):
        save_run(_small(), tmp_path, prior="no-such-prior")
    assert not any(tmp_path.iterdir())


def test_save_run_records_a_fitted_prior_with_its_options(tmp_path):
    from genkit.priors import fit_prior

    model = _small()
    fit_prior(model, "gmm", torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)), components=3)
    save_run(model, tmp_path, prior="gmm")
    assert read_json(tmp_path / CONFIG_FILE)["parts"]["prior"]["options"]["components"] == 3
    again = load_model(tmp_path)  # a VAE with an ex-post prior reloads, though it could not be trained with it
    assert type(again.prior) is type(model.prior) and again.prior.components == 3
    for name, value in model.prior.state_dict().items():
        assert torch.equal(again.prior.state_dict()[name], value), name
