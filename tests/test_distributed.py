"""DDP through torchrun on CPU (gloo): same weights as one process with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genkit.checkpoint import load_checkpoint, load_model
from tests.conftest import write_distribution
from tests.fault_helpers import interruptible

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

# The deterministic autoencoder: with no sampling noise, 2 processes must reproduce 1 process up to rounding.
# A run extended by --resume matches a planned one only at a constant rate. MODEL[:-3] drops the batch size and --quiet.
MODEL = ["ae", "--latent", "4", "--set", "channels=4", "--set", "hidden=16", "--lr-schedule", "constant"]
MODEL += ["--lr-warmup", "0", "--batch-size", "16", "--quiet"]
# Float sums are reduced in another order across processes than within one: allow rounding-level drift.
ATOL = 1e-4


def genkit_run(args, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--nproc", str(nproc)] if nproc > 1 else []
    result = subprocess.run(
        [sys.executable, "-m", "genkit", "run", *args, *extra], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_match_one_and_resume(image_folder, tmp_path):
    data = ["--dataset", str(image_folder)]
    genkit_run([*MODEL, *data, "--epochs", "2", "--out", str(tmp_path / "one")], nproc=1)
    genkit_run([*MODEL, *data, "--epochs", "2", "--out", str(tmp_path / "two")], nproc=2)
    one, two = load_model(tmp_path / "one").state_dict(), load_model(tmp_path / "two").state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=ATOL, msg=key)

    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    # only the main process writes: one checkpoint, no stray temporary files from a second writer
    assert not list((tmp_path / "two").glob(".*tmp"))
    assert load_checkpoint(tmp_path / "two" / "checkpoint.pt")["epoch"] == 2

    # a distributed run stopped after epoch 1 and resumed distributed ends where the uninterrupted one does
    genkit_run([*MODEL, *data, "--epochs", "1", "--out", str(tmp_path / "part")], nproc=2)
    genkit_run(["--resume", str(tmp_path / "part"), "--epochs", "2", "--quiet"], nproc=2)
    resumed = load_model(tmp_path / "part").state_dict()
    for key in two:
        torch.testing.assert_close(resumed[key], two[key], rtol=0, atol=ATOL, msg=key)


def test_streamed_folder_under_two_processes(image_folder, tmp_path):
    """An image folder read from disk: PyTorch's DistributedSampler gives each process its shard."""
    args = [*MODEL, "--dataset", str(image_folder), "--stream", "--workers", "0", "--epochs", "2"]
    genkit_run([*args, "--out", str(tmp_path / "run")], nproc=2)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_batch_must_divide_among_processes(image_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        *MODEL[:-3],
        "--batch-size",
        "15",
        "--dataset",
        str(image_folder),
        "--out",
        str(tmp_path / "x"),
        "--nproc",
        "2",
    ]
    result = subprocess.run([sys.executable, "-m", "genkit", "run", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert (
        result.stderr
        == "genkit: error: batch size must be divisible by the 2 processes: change --batch-size or --nproc\n"
    )


NAN_ON_ONE_RANK = """
    import torch.distributed as dist
    from conv_base import ConvAutoencoder

    class NaNOnRankOne(ConvAutoencoder):
        '''An autoencoder whose loss turns NaN on the second process only, at epoch 2, step 3.'''

        calls = 0

        def loss(self, x, target=None, **kw):
            out = super().loss(x, target, **kw)
            if self.training and dist.get_rank() == 1:
                type(self).calls += 1
                if type(self).calls == 4 + 3:  # 4 steps an epoch: 58 training images in global batches of 16
                    out.terms["reconstruction"] = out.terms["reconstruction"] * float("nan")
            return out
"""


def test_non_finite_loss_on_one_process_stops_every_process(plugin_site, image_folder, tmp_path):
    write_distribution(plugin_site, "nan-pkg", {"genkit.models": {"nan-ae": "fake_nan:NaNOnRankOne"}},
                       {"fake_nan": NAN_ON_ONE_RANK})  # fmt: skip
    run = tmp_path / "run"
    args = ["nan-ae", *MODEL[1:], "--dataset", str(image_folder), "--epochs", "3", "--out", str(run), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "genkit", "run", *args], capture_output=True, text=True, env=env,
                            timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    # one line from the main process; no traceback or log lines from torchrun
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("genkit: error: the loss became nan at epoch 2, step 3;")
    assert f"the checkpoint of epoch 1 is kept in {run}" in lines[0]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_model(run).state_dict().values())


def test_ctrl_c_stops_every_process_with_one_line_and_the_run_resumes(image_folder, tmp_path):
    run = tmp_path / "run"
    args = [*MODEL[:-3], "--batch-size", "2", "--epochs", "1000", "--quiet", "--dataset", str(image_folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genkit", "run", *args, "--out", str(run), "--nproc", "2"],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=interruptible)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group gets it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("training ")]
    assert lines == ["genkit: error: interrupted; a run can be continued with --resume RUN_DIR"], err[-3000:]
    epoch = load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert epoch >= 1
    genkit_run(["--resume", str(run), "--epochs", str(epoch + 1), "--quiet"], nproc=2)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == epoch + 1
