"""Faults: killed runs, damaged or hostile run files, broken plugins, NaN/inf, a full disk.

Whatever happens, nothing saved is lost, the user reads one line on stderr (exit code 2, or 130 for Ctrl-C)
and never a traceback, unless they ask for one with ``--debug``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import genkit
from genkit.checkpoint import load_checkpoint, load_model
from genkit.cli import main
from genkit.data import ImageData
from genkit.run import CheckpointEveryEpoch, StopOnNonFiniteWeights, resume_run
from genkit.train import Callback, TrainConfig, Trainer
from tests.conftest import write_distribution
from tests.fault_helpers import (
    ENV,
    TINY,
    TINY_ARGS,
    genkit_cmd,
    interruptible,
    one_error_line,
    tiny_run,
    write_images,
)

QUIET = {"progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """64 generated 28x28 PNGs: 58 training images, 4 steps an epoch at batch size 16."""
    return write_images(tmp_path_factory.mktemp("faults") / "images", 64)


@pytest.fixture(scope="module")
def slow_images(tmp_path_factory) -> Path:
    """200 PNGs: at batch size 1 an epoch is 180 steps, long enough to be interrupted in the middle."""
    return write_images(tmp_path_factory.mktemp("faults") / "slow", 200)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, images) -> Path:
    """A finished one-epoch run of the tiny ae; tests damage copies of it."""
    return tiny_run(tmp_path_factory.mktemp("faults") / "finished", images)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Run every test in its own folder (no default output path lands in the repository), without GENKIT_DEBUG."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENKIT_DEBUG", raising=False)


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- killed runs -------------------------------------------------------------------------------------------


def saved_epoch(run: Path) -> int:
    """The epoch of the run's checkpoint (0 while there is none), read as --resume reads it."""
    try:
        return int(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"])
    except FileNotFoundError:
        return 0


def start(command: list[str], stderr: Path, cwd: Path) -> subprocess.Popen:
    with stderr.open("w") as err:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=ENV, cwd=cwd, preexec_fn=interruptible
        )


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"genkit exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_interrupted_then_killed_run_resumes_without_losing_or_repeating_epochs(slow_images, tmp_path):
    # An epoch of this tiny run takes about 0.2 s, so the run gets many epochs: however fast the machine, the
    # interrupts below land well before the last one.
    epochs = 12
    run = tmp_path / "run"
    args = [*TINY_ARGS, "--epochs", str(epochs), "--batch-size", "1", "--quiet", "--dataset", slow_images, "--out", run]

    # Ctrl-C in the middle of epoch 2: one line, exit code 130, the checkpoint of epoch 1 stays
    proc = start(genkit_cmd("run", "ae", *args), tmp_path / "interrupted.err", tmp_path)
    wait_until(lambda: saved_epoch(run) >= 1, proc, "the first checkpoint")
    time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    err = (tmp_path / "interrupted.err").read_text()
    assert err.startswith("\n")  # click's blank line, which ends the ^C a terminal echoes
    line = one_error_line(err[1:])
    assert line == "genkit: error: interrupted; a run can be continued with --resume RUN_DIR"
    first = saved_epoch(run)
    assert 1 <= first < epochs

    # --resume, then SIGKILL (no handler, no clean-up) in the middle of the next epoch
    proc = start(genkit_cmd("run", "--resume", run, "--quiet"), tmp_path / "killed.err", tmp_path)
    wait_until(lambda: saved_epoch(run) > first, proc, "a checkpoint after the resume")
    time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL
    second = saved_epoch(run)
    assert first < second < epochs
    kept = load_checkpoint(run / "checkpoint.pt")["history"]
    load_model(run)  # the weights of the last finished epoch load too

    # --resume again: the run ends with every epoch exactly once; only the interrupted epochs were redone
    result = subprocess.run(
        genkit_cmd("run", "--resume", run, "--quiet"), capture_output=True, text=True, env=ENV, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} after epoch {second} of {epochs}" in result.stdout
    history = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert history[:second] == kept  # the finished epochs were kept, not trained again
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == epochs
    assert not list(run.glob(".*.tmp"))


#: ``python -c`` wrapper: genkit whose rename of the second save of file ARGV[1] signals ARGV[2] and hangs.
HANG_BEFORE_RENAME = """
import os, sys, time
from pathlib import Path

import genkit.checkpoint

target, ready = sys.argv[1], Path(sys.argv[2])
rename = os.replace


def hanging_rename(src, dst):
    if Path(dst).name == target and Path(dst).exists():
        ready.write_text(str(src))
        time.sleep(600)
    rename(src, dst)


genkit.checkpoint.os.replace = hanging_rename
from genkit.cli import main

sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("target", ["checkpoint.pt", "model.safetensors"])
def test_killed_while_saving_keeps_whole_files_and_resumes(target, images, tmp_path):
    run, ready = tmp_path / "run", tmp_path / "ready"
    args = ["run", "ae", *TINY_ARGS, "--epochs", "3", "--batch-size", "16", "--quiet", "--dataset", images]
    command = [sys.executable, "-c", HANG_BEFORE_RENAME, target, str(ready), *map(str, args), "--out", str(run)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    wait_until(ready.exists, proc, f"the second save of {target}")
    proc.kill()
    proc.wait(60)

    stray = Path(ready.read_text())
    assert stray.is_file() and stray.name.startswith(f".{target}.") and stray.name.endswith(".tmp")
    state = load_checkpoint(run / "checkpoint.pt")
    weights = load_model(run).state_dict()
    if target == "checkpoint.pt":
        # the new checkpoint was written in full but never renamed: the published files are epoch 1's, consistent
        assert state["epoch"] == 1
        assert torch.load(stray, weights_only=True)["epoch"] == 2
        assert all(torch.equal(value, state["model"][key]) for key, value in weights.items())
    else:
        # killed between the two renames: a whole checkpoint of epoch 2 and whole weights of epoch 1
        assert state["epoch"] == 2
        assert not all(torch.equal(value, state["model"][key]) for key, value in weights.items())

    result = subprocess.run(
        genkit_cmd("run", "--resume", run, "--quiet"), capture_output=True, text=True, env=ENV, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"after epoch {state['epoch']} of 3" in result.stdout
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2, 3]
    assert not stray.exists() and not list(run.glob(".*.tmp"))
    final = load_checkpoint(run / "checkpoint.pt")
    assert final["epoch"] == 3
    assert all(torch.equal(value, final["model"][key]) for key, value in load_model(run).state_dict().items())


def test_resume_removes_only_temporary_files_of_killed_saves(run_copy):
    ours = [".checkpoint.pt.999999.tmp", ".model.safetensors.12.tmp", ".metrics.json.7.tmp", ".config.json.3.tmp"]
    theirs = ["notes.tmp", ".notes.txt.12.tmp", "checkpoint.pt.bak", ".checkpoint.pt.tmp"]
    for name in ours + theirs:
        (run_copy / name).write_bytes(b"half a file")
    resume_run(run_copy, log=lambda _: None)
    assert not any((run_copy / name).exists() for name in ours)
    assert all((run_copy / name).read_bytes() == b"half a file" for name in theirs)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(images, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    saves = []
    real_write = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".checkpoint.pt."):
            saves.append(self)
            if len(saves) == 2:  # the checkpoint of epoch 2: the disk fills up half-way
                real_write(self, data[:4])
                raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write() says it: no file name
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, _, err = cli(capsys, "run", "ae", *TINY_ARGS, "--epochs", "3", "--batch-size", "16", "--quiet",
                       "--dataset", images, "--out", run)  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"genkit: error: {run}/checkpoint.pt: No space left on device (free some space")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    load_model(run)
    assert not list(run.glob(".*.tmp"))

    monkeypatch.setattr(Path, "write_bytes", real_write)  # space freed: the run continues
    code, out, _ = cli(capsys, "run", "--resume", run, "--quiet")
    assert code == 0 and "after epoch 1 of 3" in out


def test_unwritable_output_folder_is_one_line(images, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = cli(capsys, "run", "ae", *TINY_ARGS, "--epochs", "1", "--dataset", images,
                       "--out", tmp_path / "file" / "run")  # fmt: skip
    assert code == 2
    assert one_error_line(err) == f"genkit: error: {tmp_path / 'file' / 'run'}: Not a directory"


# -- damaged run files -------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def tampered_checkpoint(**changes):
    def tamper(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        torch.save({**state, **changes}, path)

    return tamper


def tampered_config(change):
    def tamper(path: Path) -> None:
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))

    return tamper


def other_models_weights(path: Path) -> None:
    save_file({k: v.contiguous() for k, v in genkit.get_model("vae-conv").state_dict().items()}, str(path))


def header_tampered(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:200].replace(b'"F32"', b'"F64"') + data[200:])


# (file, damage, what `sample` says (None: it works), what `run --resume` says (None: it works))
DAMAGE = {
    "checkpoint-missing": ("checkpoint.pt", Path.unlink, None, "is missing: nothing to resume"),
    "checkpoint-empty": ("checkpoint.pt", lambda p: p.write_bytes(b""), None, "is empty"),
    "checkpoint-truncated": ("checkpoint.pt", truncate, None, "is corrupt or truncated ("),
    "checkpoint-garbage": ("checkpoint.pt", lambda p: p.write_bytes(bytes(range(256)) * 8), None, "is corrupt or not"),
    "checkpoint-bad-epoch": ("checkpoint.pt", tampered_checkpoint(epoch=-1), None, "tampered with: its epoch is -1"),
    "checkpoint-bad-history": ("checkpoint.pt", tampered_checkpoint(history="x"), None, "its history is not a list"),
    "checkpoint-other-model": ("checkpoint.pt", tampered_checkpoint(model={}), None, "does not fit this run's model"),
    "weights-missing": ("model.safetensors", Path.unlink, "is missing", None),
    "weights-empty": ("model.safetensors", lambda p: p.write_bytes(b""), "is empty", None),
    "weights-truncated": ("model.safetensors", truncate, "is not a readable safetensors file", None),
    "weights-header": ("model.safetensors", header_tampered, "invalid shape, data type, or offset", None),
    "weights-other-model": ("model.safetensors", other_models_weights, "does not fit model 'ae'", None),
    "config-missing": ("config.json", Path.unlink, "is missing", "is missing"),
    "config-empty": ("config.json", lambda p: p.write_text(""), "is empty", "is empty"),
    "config-truncated": ("config.json", truncate, "is not valid JSON", "is not valid JSON"),
    "config-binary": (
        "config.json",
        lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
        "not valid JSON",
        "not valid JSON",
    ),
    "config-nested": ("config.json", lambda p: p.write_text("[" * 100000), "nested too deeply", "nested too deeply"),
    "config-long-number": (
        "config.json",
        lambda p: p.write_text(p.read_text().replace('"latent": 2', '"latent": ' + "9" * 5000)),
        "is not valid JSON (Exceeds the limit (4300 digits)",
        "is not valid JSON (Exceeds the limit (4300 digits)",
    ),
    "config-list": ("config.json", lambda p: p.write_text("[1, 2]"), "should hold a JSON object", "JSON object"),
    "config-unknown-model": (
        "config.json",
        tampered_config(lambda c: c.update(model="vae-cnov")),
        "unknown models plugin 'vae-cnov'; did you mean vae-conv?",
        "did you mean vae-conv?",
    ),
    "config-model-null": ("config.json", tampered_config(lambda c: c.update(model=None)), "is damaged", "is damaged"),
    "config-latent-text": (
        "config.json",
        tampered_config(lambda c: c["model_config"].update(latent="x")),
        "latent must be an integer, got 'x'",
        "latent must be an integer, got 'x'",
    ),
    "config-epochs": (
        "config.json",
        tampered_config(lambda c: c["train"].update(epochs=-1)),
        None,
        "epochs must be positive, got -1",
    ),
    "config-seed": ("config.json", tampered_config(lambda c: c["train"].update(seed=2**70)), None, "seed must be"),
    "config-device": (
        "config.json",
        tampered_config(lambda c: c["train"].update(device="meta")),
        None,
        "device 'meta'",
    ),
    "config-noise": (
        "config.json",
        tampered_config(lambda c: c["data"].update(noise=5)),
        None,
        "is damaged: its data section: noise must be a string, got 5",
    ),
    "config-data": (
        "config.json",
        tampered_config(lambda c: c.update(data=None)),
        None,
        "is damaged: the options of its data section must be a JSON object",
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_run_file_is_one_line_naming_the_file(case, run_copy, tmp_path, capsys):
    name, damage, sample_says, resume_says = DAMAGE[case]
    damage(run_copy / name)
    for args, says in [
        (["sample", run_copy, "-n", "4", "-o", tmp_path / "s.png"], sample_says),
        (["run", "--resume", run_copy, "--quiet"], resume_says),
    ]:
        code, _, err = cli(capsys, *args)
        if says is None:  # this verb does not need the damaged file
            assert code == 0, err
            continue
        assert code == 2
        line = one_error_line(err)
        assert f"{run_copy / name}" in line and says in line, line
    if name == "model.safetensors":  # --resume rewrote the weights from the checkpoint: nothing was lost
        assert cli(capsys, "sample", run_copy, "-n", "4", "-o", tmp_path / "s.png")[0] == 0


class RunsCode:
    """Unpickling this runs ``exec(source)``; weights-only loading must refuse it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


@pytest.mark.parametrize("layout", ["plain-pickle", "torch-zip"])
def test_checkpoint_that_would_run_code_is_refused(layout, run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = {"epoch": 1, "model": RunsCode(f"open({str(marker)!r}, 'w').close()"), "optimizer": {}}
    path = run_copy / "checkpoint.pt"
    if layout == "plain-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)

    code, _, err = cli(capsys, "run", "--resume", run_copy, "--quiet")
    assert code == 2
    line = one_error_line(err)
    assert f"{path} was refused by safe loading: it refers to exec, so loading it could run code" in line
    assert not marker.exists()
    assert cli(capsys, "sample", run_copy, "-n", "4", "-o", tmp_path / "s.png")[0] == 0  # weights are separate
    assert not marker.exists()

    with contextlib.suppress(RuntimeError):  # a plain pickle is no torch file, but unpickling it ran the code
        torch.load(path, weights_only=False)  # proof that the payload is live: unsafe loading runs it
    assert marker.exists()


# -- broken plugins ------------------------------------------------------------------------------------------

WRONG_SHAPE = """
    from conv_base import ConvVAE
    from genkit_plugins.nets import ConvDecoder

    class HalfDecoder(ConvDecoder):
        def forward(self, z):
            return super().forward(z)[:, :, ::2, ::2]

    class HalfSize(ConvVAE):
        '''A VAE whose decoder returns images of half the size.'''

        def __init__(self, config):
            super().__init__(config)
            self.decoder = HalfDecoder(self.decoder.config, config)
"""
BUILD_FAILS = """
    from conv_base import ConvVAE

    class NeedsGPU(ConvVAE):
        def __init__(self, config):
            raise RuntimeError('no GPU here')
"""
FORWARD_FAILS = """
    from conv_base import ConvVAE

    class Fragile(ConvVAE):
        def encode(self, x):
            raise ValueError('cannot encode this')
"""
PLUGINS = {
    "import": ("broken-pkg", "fake_import", "raise ImportError('needs libfoo')\n", "Model"),
    "build": ("gpu-pkg", "fake_build", BUILD_FAILS, "NeedsGPU"),
    "shape": ("shape-pkg", "fake_shape", WRONG_SHAPE, "HalfSize"),
    "forward": ("fragile-pkg", "fake_forward", FORWARD_FAILS, "Fragile"),
}
PLUGIN_SAYS = {
    "import": "broken-pkg[import]: failed to load fake_import:Model: ImportError: needs libfoo",
    "build": "gpu-pkg[build]: failed to build: RuntimeError: no GPU here",
    "shape": "shape-pkg[shape]: decoder returned shape (2, 1, 14, 14), expected (2, 1, 28, 28); fix the decoder",
    "forward": "fragile-pkg[forward]: fails on a batch shaped (2, 1, 28, 28): ValueError: cannot encode this",
}


def test_broken_plugins_are_named_and_leave_the_others_working(plugin_site, images, tmp_path, capsys):
    for name, (dist, module, source, target) in PLUGINS.items():
        write_distribution(plugin_site, dist, {"genkit.models": {name: f"{module}:{target}"}}, {module: source})
    for name, says in PLUGIN_SAYS.items():
        out = tmp_path / name
        code, _, err = cli(capsys, "run", name, "--epochs", "1", "--quiet", "--dataset", images, "--out", out)
        assert code == 2, err
        assert one_error_line(err) == f"genkit: error: {says}"
        assert not out.exists()  # it failed before any file was written

    code, out, _ = cli(capsys, "list")
    assert code == 0
    flagged = [line.split()[0] for line in out.splitlines() if " BROKEN " in line]
    assert flagged == ["import"]  # list imports plugins but builds none
    code, _, err = cli(capsys, "run", "ae", *TINY_ARGS, "--epochs", "1", "--limit", "8", "--quiet",
                       "--dataset", images, "--out", tmp_path / "fine")  # fmt: skip
    assert code == 0, err
    assert load_checkpoint(tmp_path / "fine" / "checkpoint.pt")["epoch"] == 1


def test_wrong_decoder_output_names_the_distribution_in_the_api(plugin_site):
    write_distribution(plugin_site, "shape-pkg", {"genkit.models": {"shape": "fake_shape:HalfSize"}},
                       {"fake_shape": WRONG_SHAPE})  # fmt: skip
    model = genkit.get_model("shape")
    assert model.plugin == "shape-pkg[shape]"
    with pytest.raises(genkit.PluginError, match=r"^shape-pkg\[shape\]: decoder returned shape \(3, 1, 14, 14\)"):
        model.sample(3)
    assert genkit.get_model("vae-conv").plugin == "genkit[vae-conv]"


# -- NaN and inf ---------------------------------------------------------------------------------------------


def data_of(images: torch.Tensor) -> ImageData:
    return ImageData(images, torch.zeros(len(images), dtype=torch.long))


@pytest.mark.parametrize("sync_every", [1, 3, 50])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixel_is_skipped_on_the_device_and_reported_at_the_next_sync(bad, sync_every, tiny_images):
    images = tiny_images.clone()
    images[37, 0, 14, 14] = bad
    model = genkit.get_model("vae-conv", **TINY)
    steps = []
    loss = model.loss

    def spy(x, target=None, **kw):
        if model.training:
            steps.append(bool(torch.isfinite(x).all()))
        return loss(x, target, **kw)

    model.loss = spy
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=8, **QUIET))
    trainer.sync_every = sync_every
    with pytest.raises(genkit.TrainingError, match=r"the loss became (nan|inf) at epoch 1, step (\d+);") as info:
        trainer.fit(data_of(images))
    bad_step = steps.index(False) + 1
    assert int(info.value.args[0].split("step ")[1].split(";")[0]) == bad_step
    per_epoch = math.ceil(len(images) / 8)
    assert len(steps) == min(math.ceil(bad_step / sync_every) * sync_every, per_epoch)  # stopped at the next read
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {len(steps) - 1}  # every step but the bad one was taken
    assert not hasattr(trainer.optimizer, "found_inf")  # no stale flag for a later step


class PoisonAfter(Callback):
    """Writes a NaN pixel into the training images once epoch ``epoch`` is done (data going bad mid-run)."""

    def __init__(self, images: torch.Tensor, epoch: int) -> None:
        self.images, self.epoch = images, epoch

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.epoch == self.epoch:
            self.images[5, 0, 3, 3] = float("nan")


def test_nan_in_the_data_mid_run_keeps_the_last_good_checkpoint(tiny_images, tmp_path):
    images = tiny_images.clone()
    model = genkit.get_model("ae", **TINY)
    trainer = Trainer(model, TrainConfig(epochs=3, batch_size=16, **QUIET))
    checkpoint = CheckpointEveryEpoch(tmp_path, {})
    trainer.callbacks += [PoisonAfter(images, 1), StopOnNonFiniteWeights(), checkpoint]
    with pytest.raises(genkit.TrainingError, match=r"the loss became nan at epoch 2, step \d+"):
        trainer.fit(data_of(images))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == checkpoint.saved == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]["epoch"] == 1


POISONED = """
    import torch
    from conv_base import ConvVAE

    class PoisonedGradient(ConvVAE):
        '''A VAE whose loss stays finite while its gradient turns NaN at the last step of epoch 2.'''

        calls = 0

        def loss(self, x, target=None, **kw):
            out = super().loss(x, target, **kw)
            if self.training:
                type(self).calls += 1
                if type(self).calls == 8:  # 4 steps an epoch: 58 training images in batches of 16
                    p = next(self.parameters())
                    poison = 0.0 * (p - p.detach()).abs().sqrt().sum()  # 0, with a NaN gradient
                    out.terms["reconstruction"] = out.terms["reconstruction"] + poison
            return out

    class PoisonedBuffer(ConvVAE):
        '''A VAE whose running statistic (a buffer: no gradient) turns NaN at the last step of epoch 2.'''

        calls = 0

        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("running_mean", torch.zeros(()))

        def loss(self, x, target=None, **kw):
            if self.training:
                type(self).calls += 1
                if type(self).calls == 8:
                    self.running_mean.fill_(float("nan"))
            return super().loss(x, target, **kw)
"""


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("poison-gradient", "the gradient became nan at epoch 2, step 4"),
        ("poison-buffer", "the weights became NaN or infinite in epoch 2 (e.g. running_mean)"),
    ],
)
def test_weights_turning_nan_with_a_finite_loss_are_never_saved(model, message, plugin_site, images, tmp_path, capsys):
    entry_points = {"poison-gradient": "fake_poison:PoisonedGradient", "poison-buffer": "fake_poison:PoisonedBuffer"}
    write_distribution(plugin_site, "poison-pkg", {"genkit.models": entry_points}, {"fake_poison": POISONED})
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", model, *TINY_ARGS, "--epochs", "3", "--batch-size", "16", "--quiet",
                       "--dataset", images, "--out", run)  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert message in line and "the checkpoint of epoch 1 is kept" in line
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_model(run).state_dict().values())
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1] and message.split(" (")[0] in metrics["stopped"]


def test_dataset_with_nan_pixels_is_refused_before_any_file_is_written(images, tmp_path, capsys, monkeypatch):
    import genkit.run

    def nan_data(*args, **kwargs):
        x = torch.rand(8, 1, 28, 28)
        x[3, 0, 0, 0] = float("nan")
        return data_of(x), data_of(x[:2])

    monkeypatch.setattr(genkit.run, "load_dataset", nan_data)
    code, _, err = cli(capsys, "run", "ae", "--dataset", images, "--out", tmp_path / "run")
    assert code == 2
    assert one_error_line(err) == f"genkit: error: dataset {images} contains NaN or infinite pixel values"
    assert not (tmp_path / "run").exists()


# -- --debug -------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("GENKIT_DEBUG", raising=False)
    with pytest.raises(genkit.PluginError, match="did you mean vae-conv"):
        main(["--debug", "info", "vae-cnov"])
    result = subprocess.run(
        genkit_cmd("info", "vae-cnov"), capture_output=True, text=True, env={**ENV, "GENKIT_DEBUG": "1"}
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "UnknownPluginError" in result.stderr


def test_internal_error_is_one_line_pointing_at_debug(capsys, monkeypatch):
    import genkit.checkpoint

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(genkit.checkpoint, "load_model", bug)
    code, _, err = cli(capsys, "sample", "anything")
    assert code == 1
    assert one_error_line(err) == (
        "genkit: error: internal error: ZeroDivisionError: a bug (rerun with --debug for the traceback)"
    )
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "sample", "anything"])
