"""Reliability, second pass: plugins that exit or hang at import, unwritable HOME, outputs never half-written."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

import genkit
from genkit.checkpoint import save_run
from genkit.cli import main
from tests.conftest import write_distribution

HOSTILE = {
    "exits": ("exit-pkg", "import sys\nsys.exit(0)\n"),
    "generator-exit": ("genexit-pkg", "raise GeneratorExit\n"),
    "system-exit": ("sysexit-pkg", "raise SystemExit('bye')\n"),
    "sleeps": ("sleep-pkg", "import time\ntime.sleep(600)\n"),
}


def _genkit(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    command = [sys.executable, "-m", "genkit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=120, check=False)


def test_plugins_that_exit_or_hang_at_import_are_flagged_and_the_rest_listed(tmp_path):
    site = tmp_path / "site"
    for name, (dist, source) in HOSTILE.items():
        module = f"fake_{name.replace('-', '_')}"
        write_distribution(site, dist, {"genkit.models": {name: f"{module}:Model"}}, {module: source})
    write_distribution(site, "odd-doc-pkg", {"genkit.models": {"odd-doc": "fake_doc:Odd"}},
                       {"fake_doc": "import genkit\nclass Odd(genkit.Model):\n    __doc__ = 42\n"})  # fmt: skip
    write_distribution(site, "path-pkg", {"genkit.models": {"../evil": "fake_doc:Odd"}}, {})
    nameless = write_distribution(site, "nameless", {"genkit.priors": {"nameless": "fake_doc:Odd"}}, {})
    (nameless / "nameless-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nVersion: 0.1\n")
    started = time.perf_counter()
    result = _genkit(["list"], site, GENKIT_PLUGIN_IMPORT_TIMEOUT="10")
    assert time.perf_counter() - started < 60  # the sleeping plugin waits 600 s; it is flagged after 10
    assert result.returncode == 0 and result.stderr == ""
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "exit-pkg[exits]: failed to load fake_exits:Model: SystemExit: 0" in lines["exits"]
    assert (
        "BROKEN  sysexit-pkg[system-exit]: failed to load fake_system_exit:Model: SystemExit: bye"
        in lines["system-exit"]
    )
    assert "BROKEN  genexit-pkg[generator-exit]: failed to load" in lines["generator-exit"]
    assert "BROKEN  sleep-pkg[sleeps]: importing fake_sleeps:Model did not finish in time" in lines["sleeps"]
    assert "BROKEN  path-pkg[../evil]: '../evil' is not a valid plugin name" in lines["../evil"]
    assert lines["odd-doc"].startswith("odd-doc") and "[odd-doc-pkg]" in lines["odd-doc"]
    for builtin in ("ae", "vae-conv", "iwae", "wae", "vamp-vae"):
        assert "BROKEN" not in lines[builtin]
    priors = _genkit(["list", "--kind", "priors"], site)
    assert priors.returncode == 0 and "unknown[nameless]" in priors.stdout  # a distribution without a Name


def test_a_plugin_name_with_a_path_never_names_a_run_folder(tmp_path, plugin_site, capsys, monkeypatch):
    write_distribution(plugin_site, "path-pkg", {"genkit.models": {"../evil": "conv_base:ConvVAE"}}, {})
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["run", "../evil", "--limit", "8", "--epochs", "1"]) == 2
    assert "'../evil' is not a valid plugin name" in capsys.readouterr().err
    assert not list(work.iterdir()) and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["deeper"]


def test_an_unwritable_home_gives_no_matplotlib_warning(tmp_path):
    env = {"HOME": str(tmp_path / "no" / "such" / "home"), "XDG_CONFIG_HOME": "", "MPLCONFIGDIR": ""}
    result = _genkit(["list", "ae"], tmp_path, **env)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("ae ")


@pytest.fixture
def saved_run(tmp_path):
    torch.manual_seed(0)
    return save_run(genkit.get_model("vae-conv", latent=2, channels=4, hidden=16), tmp_path / "run")


def _disk_full_after_some_bytes(*args, **kwargs):
    target = args[1] if len(args) > 1 else kwargs.get("fp")
    Path(target).write_bytes(b"\x89PNG half")
    raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_the_existing_output_whole(saved_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    assert main(["sample", str(saved_run), "-n", "4", "-o", str(out)]) == 0
    good = out.read_bytes()
    monkeypatch.setattr("genkit.report.save_image", _disk_full_after_some_bytes)
    assert main(["sample", str(saved_run), "-n", "4", "-o", str(out), "--seed", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["grid.png"]


def test_a_failed_codes_write_leaves_the_existing_file_whole(saved_run, tmp_path, capsys, monkeypatch):
    image = tmp_path / "x.png"
    save_image(torch.rand(1, 28, 28), image)
    codes = tmp_path / "codes.npz"
    assert main(["encode", str(saved_run), str(image), "-o", str(codes)]) == 0
    good = codes.read_bytes()

    def full(file, **arrays):
        file.write(b"PK half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("genkit.cli.np.savez", full)
    assert main(["encode", str(saved_run), str(image), "-o", str(codes)]) == 2
    assert codes.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))


def test_two_inputs_with_one_name_are_refused_not_overwritten(saved_run, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save_image(torch.rand(1, 28, 28), tmp_path / folder / "x.png")
    out = tmp_path / "denoised"
    code = main(
        ["denoise", str(saved_run), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "-o", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "would both be written to" in err and "x-denoised.png" in err
    assert not out.exists()


@pytest.fixture
def small_run(image_folder, tmp_path):
    run = tmp_path / "small"
    args = ["run", "ae", "--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--quiet", "--dataset", str(image_folder), "--out", str(run)]) == 0
    return run


def test_a_run_being_trained_is_refused_to_a_second_process_and_a_stale_lock_is_taken_over(small_run, capsys):
    lock = small_run / ".genkit.lock"
    assert not lock.exists()  # released when the run ended
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(str(other.pid))
        assert main(["run", "--resume", str(small_run), "--epochs", "2", "--quiet"]) == 2
        assert f"{small_run} is being trained by process {other.pid}" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert main(["run", "--resume", str(small_run), "--epochs", "2", "--quiet"]) == 0  # its owner is gone
    assert not lock.exists()
    assert [r["epoch"] for r in json.loads((small_run / "metrics.json").read_text())["epochs"]] == [1, 2]


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--lr", "0.1"], "--lr"), (["--limit", "8"], "--limit"), (["--dataset", "fashion-mnist"], "--dataset"),
     (["--set", "latent=3"], "--set"), (["--prior", "mog"], "--prior"), (["--seed", "3", "--amp"], "--seed, --amp")],
)  # fmt: skip
def test_resume_refuses_options_it_would_otherwise_ignore(small_run, extra, named, capsys):
    before = (small_run / "config.json").read_text()
    assert main(["run", "--resume", str(small_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"so {named} cannot be changed" in err
    assert (small_run / "config.json").read_text() == before


def _tamper(run: Path, change) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, run / "checkpoint.pt")


def _sgd_state(state):
    model = genkit.get_model("ae", channels=4, hidden=16)
    state["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3)), "exp_avg of parameter 0 is shaped"),
        (lambda s: s["optimizer"]["state"][0].update(exp_avg_sq=torch.zeros(7)), "exp_avg_sq of parameter 0"),
        (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), "the optimizer's lr is 'fast'"),
        (lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.9,)), "the optimizer's betas is (0.9,)"),
        (lambda s: s["optimizer"]["state"].update({999: {}}), "names a parameter this model does not have"),
        (_sgd_state, "another optimizer's or for other parameters"),
        (lambda s: s["history"][0].pop("train_loss"), "a history record lacks epoch, train_loss"),
    ],
)
def test_a_tampered_training_state_is_one_line_before_it_reaches_torch(small_run, change, says, capsys):
    _tamper(small_run, change)
    code = subprocess.run(
        [sys.executable, "-m", "genkit", "run", "--resume", str(small_run), "--epochs", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert code.returncode == 2, code.stderr  # never a crash by a signal (a mis-shaped moment segfaulted)
    assert code.stderr.count("\n") == 1 and "checkpoint.pt is tampered with or damaged" in code.stderr
    assert says in code.stderr


def test_ill_typed_training_settings_in_config_json_are_one_line(small_run, capsys):
    config = json.loads((small_run / "config.json").read_text())
    config["train"]["compile"] = "yes"
    (small_run / "config.json").write_text(json.dumps(config))
    assert main(["run", "--resume", str(small_run), "--epochs", "2"]) == 2
    assert "config.json: compile must be true or false, got 'yes'" in capsys.readouterr().err
