"""The example third-party plugin, installed for real with pip into a separate folder."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, pip_install_beside

PLUGIN = ROOT / "plugins" / "example-mlp-vae"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    return pip_install_beside(PLUGIN, tmp_path_factory.mktemp("site"))


@pytest.mark.slow
def test_installed_plugin_appears_in_genkit_list(installed_plugin):
    result = subprocess.run(
        [sys.executable, "-m", "genkit", "list"], env=installed_plugin, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("mlp-vae"))
    assert line.endswith("[genkit-mlp-vae]")
    assert "vae-conv" in result.stdout


@pytest.mark.slow
def test_installed_plugin_builds_and_passes_conformance(installed_plugin):
    code = "import genkit; m = genkit.get_model('mlp-vae', latent=5); print(type(m).__module__, m.config.latent)"
    result = subprocess.run([sys.executable, "-c", code], env=installed_plugin, capture_output=True, text=True)
    assert result.stdout.split() == ["genkit_mlp_vae", "5"], result.stderr
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
        env=installed_plugin,
        capture_output=True,
        text=True,
        cwd=PLUGIN,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout
