"""DDP through torchrun on CPU (gloo): same weights as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from genkit.checkpoint import load_checkpoint, load_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

# The deterministic autoencoder: with no sampling noise, 2 processes must reproduce 1 process up to rounding.
MODEL = ["ae", "--latent", "4", "--set", "channels=4", "--set", "hidden=16", "--batch-size", "16", "--quiet"]
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
