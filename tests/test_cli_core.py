import os
import re
import subprocess
import sys

import pytest

import genkit
from genkit import checkpoint, registry
from genkit.cli import KINDS, main
from genkit.errors import UnknownPluginError
from tests.conftest import write_distribution


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_builtins_with_distribution(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    for name in ("ae", "vae-conv", "beta-vae"):
        assert lines[name].endswith("[genkit]")


def test_list_flags_broken_plugin_in_one_line(capsys, plugin_site):
    write_distribution(plugin_site, "broken-pkg", {"genkit.models": {"broken": "fake_b:M"}}, {"fake_b": "1/0\n"})
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    broken = [" ".join(line.split()) for line in out.splitlines() if "BROKEN" in line]  # columns: any width
    assert broken == ["broken BROKEN broken-pkg[broken]: failed to load fake_b:M: ZeroDivisionError: division by zero"]
    assert "vae-conv" in out


def test_info_lists_parts_and_options(capsys):
    code, out, _ = run_cli(capsys, "info", "beta-vae")
    assert code == 0
    assert "  loss     elbo" in out and "  prior    normal" in out
    assert "--set loss.beta=4.0" in out and "--set latent=10" in out and "--set encoder.head=gaussian" in out


@pytest.mark.parametrize("name", genkit.list_models())
def test_every_option_info_shows_works_as_written(name, capsys):
    from genkit.cli import _parse_settings

    code, out, _ = run_cli(capsys, "info", name)
    assert code == 0
    settings = [line.split()[1] for line in out.splitlines() if line.startswith("  --set ")]
    assert len(settings) >= 5
    default = genkit.get_model(name)
    for setting in settings:  # each shown value is the model's own, and genkit run takes it as written
        options = _parse_settings((setting,))
        model = genkit.get_model(name, **options)
        assert checkpoint.model_parts(model) == checkpoint.model_parts(default), setting


def test_info_of_a_part_kind(capsys):
    code, out, _ = run_cli(capsys, "info", "--kind", "losses", "iwae")
    assert code == 0
    assert out.splitlines()[0].startswith("iwae: Importance-weighted bound")
    assert "--set loss.k=5" in out and "--loss iwae" in out
    # a name of another kind: the error names the --kind that has it
    code, _, err = run_cli(capsys, "info", "--kind", "priors", "vamp-vae")
    assert code == 2 and "unknown priors plugin 'vamp-vae'; it is one of the models: " in err
    code, _, err = run_cli(capsys, "info", "autoregressive")
    assert code == 2 and err.strip().endswith("genkit info autoregressive --kind priors")
    # the registry gives the hint, so genkit run and the library say the same
    code, _, err = run_cli(capsys, "run", "gmm")
    assert code == 2 and err.strip().count("\n") == 0
    assert "unknown models plugin 'gmm'; it is one of the priors: genkit info gmm --kind priors" in err
    with pytest.raises(UnknownPluginError, match="unknown models plugin 'autoregressive'; it is one of the priors"):
        genkit.get_model("autoregressive")
    assert set(KINDS) == set(registry.KINDS)  # the CLI's --kind choices are the registries


def test_unknown_model_is_one_line_exit_2(capsys):
    code, _, err = run_cli(capsys, "info", "vae-cnov")
    assert code == 2
    assert err.strip().count("\n") == 0 and "did you mean vae-conv" in err


def test_python_m_genkit_works():
    result = subprocess.run([sys.executable, "-m", "genkit", "list", "ae"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ae ")


def test_list_is_cached_and_needs_no_torch_the_second_time(tmp_path):
    """``genkit list`` loads the plugins (and torch) once; later listings read the cache, until a plugin changes."""
    env = {**os.environ, "GENKIT_CACHE_DIR": str(tmp_path)}
    probe = (
        "import sys; from genkit.cli import cli; cli.main(['list', '--kind', 'priors'], standalone_mode=False); "
        "print('torch imported:', 'torch' in sys.modules)"
    )
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout.endswith("torch imported: True\n")
    assert runs[1].stdout.endswith("torch imported: False\n")
    assert runs[0].stdout.replace("True", "False") == runs[1].stdout  # the same rows
    assert re.search(r"^normal +N\(0, I\)", runs[1].stdout, re.MULTILINE)


def test_list_cache_is_ignored_when_a_plugin_module_changes(tmp_path, plugin_site, monkeypatch):
    from genkit import listing

    monkeypatch.setenv("GENKIT_CACHE_DIR", str(tmp_path))
    write_distribution(plugin_site, "cache-probe", {"genkit.noise": {"probe": "probe_mod:Probe"}}, {"probe_mod": ""})
    rows = [listing.Row("probe", "cache-probe", "cached text")]
    listing.save("genkit.noise", rows)
    assert listing.load("genkit.noise") == rows
    module = plugin_site / "probe_mod.py"
    os.utime(module, ns=(0, module.stat().st_mtime_ns + 1_000_000_000))  # the plugin was edited
    assert listing.load("genkit.noise") is None
    # a broken plugin is never cached, so its row is not shown after it is mended
    listing.save("genkit.noise", [listing.Row("probe", "cache-probe", broken="cache-probe[probe]: failed to load")])
    assert listing.load("genkit.noise") is None
