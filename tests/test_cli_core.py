import subprocess
import sys

from genkit.cli import main
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
    broken = [line for line in out.splitlines() if "BROKEN" in line]
    assert broken == [
        "broken    BROKEN  broken-pkg[broken]: failed to load fake_b:M: ZeroDivisionError: division by zero"
    ]
    assert "vae-conv" in out


def test_info_lists_options(capsys):
    code, out, _ = run_cli(capsys, "info", "beta-vae")
    assert code == 0
    assert "--beta" in out and "default 4.0" in out and "--latent" in out


def test_unknown_model_is_one_line_exit_2(capsys):
    code, _, err = run_cli(capsys, "info", "vae-cnov")
    assert code == 2
    assert err.strip().count("\n") == 0 and "did you mean vae-conv" in err


def test_python_m_genkit_works():
    result = subprocess.run([sys.executable, "-m", "genkit", "list", "ae"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ae ")
