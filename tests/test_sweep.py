"""genkit sweep and genkit compare: one run per grid point, resumable; a table, plots and a sample sheet."""

import json
import shutil
from pathlib import Path

import pytest

from genkit.cli import main
from genkit.sweep import parse_grid, point_args, point_name, points

SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16"]


def test_grids_expand_to_named_points_with_run_arguments():
    grid = parse_grid(["latent=2,8", "lr=1e-3,0.01", "prior=normal,mog"])
    assert len(points(grid)) == 8 and points(grid)[0] == {"latent": 2, "lr": 0.001, "prior": "normal"}
    point = {"latent": 8, "lr": 0.01, "prior": "mog", "loss.k": 5}
    assert point_name(point) == "latent=8_lr=0.01_prior=mog_loss.k=5"
    assert point_args(point) == ["--set", "latent=8", "--lr", "0.01", "--prior", "mog", "--set", "loss.k=5"]
    from genkit.sweep import _order

    assert sorted([64, 2, 16, "mog", "gmm", 4.5], key=_order) == [2, 4.5, 16, 64, "gmm", "mog"]  # rows of compare


@pytest.mark.parametrize(
    "grid, says",
    [(["latent"], "give KEY=V1,V2"), (["latent="], "give KEY=V1,V2"), (["a b=1"], "give KEY=V1,V2"),
     (["latent=1", "latent=2"], "names latent twice"), ([], "at least one --grid")],
)  # fmt: skip
def test_a_bad_grid_is_one_line(tmp_path, capsys, grid, says):
    args = [x for g in grid for x in ("--grid", g)]
    assert main(["sweep", "ae", *args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_run_options_are_checked_before_any_run(tmp_path, capsys):
    assert main(["sweep", "ae", "--grid", "latent=2,3", "--epochs", "x", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "as genkit run would say: Invalid value for '--epochs'" in err
    assert not (tmp_path / "s").exists()


@pytest.fixture
def swept(image_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "vae-conv", "--grid", "latent=2,3", *SMALL, "--dataset", str(image_folder), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    return out, args


def test_a_sweep_trains_every_point_and_compares_them(swept, capsys):
    out, _ = swept
    printed = capsys.readouterr().out
    assert "[1/2] latent=2: done" in printed and "[2/2] latent=3: done" in printed
    for name, latent in (("latent=2", 2), ("latent=3", 3)):
        assert json.loads((out / name / "config.json").read_text())["model_config"]["latent"] == latent
        assert "test" in json.loads((out / name / "metrics.json").read_text())
    rows = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| latent=")]
    assert len(rows) == 2 and rows[0].startswith("| latent=2 | 2 |")
    for picture in ("compare-latent.png", "compare-samples.png"):
        assert (out / picture).stat().st_size > 5000


def test_a_stopped_sweep_continues_without_redoing_finished_points(swept, capsys):
    out, args = swept
    capsys.readouterr()
    finished = (out / "latent=2" / "model.safetensors").stat().st_mtime_ns
    metrics = out / "latent=3" / "metrics.json"  # as if killed after its last checkpoint, before the report
    metrics.write_text(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if k != "test"}))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "latent=2: finished earlier, skipped" in printed and "[2/2] latent=3: done" in printed
    assert "resuming" in (out / "logs" / "latent=3.log").read_text()
    assert (out / "latent=2" / "model.safetensors").stat().st_mtime_ns == finished
    assert main([*args[:3], "latent=2,4", *args[4:]]) == 2  # a different grid into the same folder
    assert "holds another sweep" in capsys.readouterr().err


def test_compare_marks_unfinished_runs_instead_of_failing(swept, tmp_path, capsys):
    out, _ = swept
    shutil.copytree(out / "latent=2", tmp_path / "half")
    (tmp_path / "half" / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["compare", str(out / "latent=2"), str(out / "latent=3"), str(tmp_path / "half"),
                 "--out", str(tmp_path / "cmp")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| half | 2 | unfinished |" in printed and "| latent=3 | 3 | 0." in printed
    assert (tmp_path / "cmp" / "compare-latent.png").is_file()
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_shows_the_nll_that_genkit_eval_measured(swept, tmp_path, capsys):
    out, _ = swept
    assert main(["eval", str(out / "latent=3"), "--nll", "--samples", "4"]) == 0
    nats = json.loads((out / "latent=3" / "eval.json").read_text())["nll"]["nats"]
    capsys.readouterr()
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    rows = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("| latent")}
    assert f"| {nats:.2f} (K=4) |" in rows["| latent=3"] and "| — |" in rows["| latent=2"]


def test_compare_leaves_out_options_that_only_follow_from_the_model():
    from genkit.sweep import RunSummary, varying

    def run(name: str, model: str, head: str, latent: int) -> RunSummary:
        settings = {"model": model, "parts.encoder.head": head, "model_config.latent": latent, "train.seed": 0}
        return RunSummary(Path(name), settings, name=name)

    # a model sweep: the encoder head differs only because the models differ
    models = [run("a", "ae", "deterministic", 8), run("b", "vae-conv", "gaussian", 8)]
    assert varying(models) == ["model"]
    # models crossed with latent sizes: the latent is a choice of its own and stays
    crossed = [run("a2", "ae", "deterministic", 2), run("a8", "ae", "deterministic", 8),
               run("v2", "vae-conv", "gaussian", 2), run("v8", "vae-conv", "gaussian", 8)]  # fmt: skip
    assert varying(crossed) == ["model", "model_config.latent"]
    # a head changed within one model is a choice too
    heads = [run("a", "ae", "deterministic", 8), run("b", "ae", "gaussian", 8)]
    assert varying(heads) == ["parts.encoder.head"]
