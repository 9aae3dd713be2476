"""The example parts plugin, installed for real with pip into a separate folder.

Nothing in genkit knows about it: once installed, its parts (an encoder and a decoder, the ``laplace`` prior, the
``elbo-l1`` loss, ``cutout`` noise) and its ``laplace-vae`` preset are listed, described and used through the CLI
like genkit's own, and a built-in model trains with them.
"""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open

from genkit import registry
from genkit.cli import main
from tests.conftest import ROOT, pip_install_beside

PLUGIN = ROOT / "plugins" / "example-parts"
DISTRIBUTION = "genkit-example-parts"
#: what the package registers: (genkit list --kind KIND, name)
PROVIDED = [
    ("encoders", "linear"),
    ("decoders", "linear"),
    ("priors", "laplace"),
    ("losses", "elbo-l1"),
    ("noise", "cutout"),
    ("models", "laplace-vae"),
]
REGISTRIES = registry.KINDS.values()


@pytest.fixture(scope="module")
def parts_site(tmp_path_factory):
    """A folder the package is installed into by pip, and the environment of a process that has it installed."""
    target = tmp_path_factory.mktemp("site")
    return target, pip_install_beside(PLUGIN, target)


@pytest.fixture
def installed_parts(parts_site):
    return parts_site[1]


@pytest.fixture
def parts_in_process(parts_site, monkeypatch):
    """This process with the package installed: on sys.path, registries refreshed before and after."""
    monkeypatch.syspath_prepend(str(parts_site[0]))
    for reg in REGISTRIES:
        reg.refresh()
    yield
    monkeypatch.undo()
    for reg in REGISTRIES:
        reg.refresh()
    for name in list(sys.modules):
        if name.startswith("genkit_example_parts"):
            del sys.modules[name]


def genkit(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "genkit", *args], env=env, capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), PROVIDED)
def test_installed_parts_are_listed_with_their_distribution(parts_in_process, capsys, kind, name):
    assert main(["list", "--kind", kind]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.split()[0] == name)
    assert line.endswith(f"[{DISTRIBUTION}]") and "BROKEN" not in line
    assert "[genkit]" in out  # genkit's own are still there


@pytest.mark.slow
def test_info_shows_the_parts_options(parts_in_process, capsys):
    assert main(["info", "--kind", "priors", "laplace"]) == 0
    prior = capsys.readouterr().out
    assert prior.startswith("laplace: Factorised Laplace(0, b)")
    assert f"provided by: {DISTRIBUTION}" in prior
    assert "--set prior.scale=1.0" in prior and "--set prior.learn_scale=false" in prior
    assert main(["info", "--kind", "losses", "elbo-l1"]) == 0
    loss = capsys.readouterr().out
    assert "--set loss.pixel_scale=0.1" in loss and "--set loss.beta=1.0" in loss
    assert main(["info", "laplace-vae"]) == 0  # the preset: its parts and their options, with its defaults
    preset = capsys.readouterr().out
    assert "  prior    laplace\n" in preset and "  loss     elbo-l1\n" in preset
    assert "--set prior.learn_scale=true" in preset and "--set encoder.channels=32" in preset


@pytest.mark.slow
def test_the_loss_refuses_a_deterministic_encoder_naming_both_parts(parts_in_process, capsys):
    assert main(["run", "ae", "--loss", "elbo-l1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genkit: error: loss elbo-l1 cannot work with encoder conv: the KL term needs")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_builtin_model_trains_and_samples_with_the_plugin_parts(installed_parts, data_dir, tmp_path):
    run = genkit(
        installed_parts,
        *("run", "vae-conv", "--prior", "laplace", "--loss", "elbo-l1"),
        *("--set", "loss.beta=0.5", "--set", "prior.learn_scale=true"),
        *("--limit", "64", "--epochs", "1", "--out", "R", "--quiet", "--data-dir", str(data_dir)),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "R" / "config.json").read_text())
    assert config["parts"]["prior"] == {"name": "laplace", "options": {"scale": 1.0, "learn_scale": True}}
    assert config["parts"]["loss"] == {"name": "elbo-l1", "options": {"pixel_scale": 0.1, "beta": 0.5}}
    metrics = json.loads((tmp_path / "R" / "metrics.json").read_text())
    assert {"train_reconstruction", "train_kl"} <= set(metrics["epochs"][-1])
    with safe_open(str(tmp_path / "R" / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("prior.log_scale").shape == (10,)  # the learned scales are saved

    sample = genkit(installed_parts, "sample", "R", "-n", "4", cwd=tmp_path)  # rebuilds the parts from config.json
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("wrote 4 samples to ")
    assert (tmp_path / sample.stdout.split(" to ")[-1].strip()).is_file()


@pytest.mark.slow
def test_the_plugin_passes_its_conformance_suites(installed_parts):
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
        env=installed_parts,
        capture_output=True,
        text=True,
        cwd=PLUGIN,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "skipped" not in tests.stdout
