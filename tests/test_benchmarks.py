"""The benchmark scripts end to end on tiny protocols: they run, and what they write is complete and honest."""

import json
import math
import shutil
import subprocess

import pytest
import torch

import genkit
from benchmarks import results_io, speed, suite
from genkit import fid
from genkit.checkpoint import load_checkpoint, save_checkpoint
from genkit.errors import ConfigError
from genkit.files import cache_root


@pytest.fixture
def fid_weights():
    if not fid.weights_path().is_file():
        pytest.skip(
            "pytorch-fid's weights are not in the torch hub cache: run python -c 'import genkit.fid as f; "
            "f.ensure_weights()' once, or set TORCH_HOME to a folder holding them"
        )


def test_quality_suite_on_a_tiny_protocol(data_dir, fid_weights, tmp_path, monkeypatch):
    protocol = suite.Protocol(
        "tiny",
        epochs=2,
        train_limit=8192,
        test_limit=64,
        fid_samples=48,
        gmm_components=2,
        ex_post=("gmm",),  # the default adds diffusion, whose fitting takes a minute
        nll_samples=4,
        entries=[suite.Entry("ae")],
    )
    out = tmp_path / "mnist-cpu-tiny.json"
    record = suite.run(protocol, torch.device("cpu"), out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(record))
    row = saved["results"][0]
    assert 0 < row["test_mse"] < 0.06  # the mean image scores about 0.067
    assert set(row["psnr"]) == set(suite.DENOISING)
    for spec, pair in row["psnr"].items():
        assert 0 < pair["noisy"] < 40 and 0 < pair["output"] < 40, spec
    assert row["fid"]["prior"] > 0 and row["prior"] == "normal" and row["fid"]["gmm"] > 0
    assert saved["fid_protocol"]["samples"] == 48 and saved["fid_protocol"]["weights_sha256"]
    table = out.with_suffix(".md").read_text()
    assert f"| ae | {row['test_mse']:.4f} | {row['fid']['prior']:.1f} | {row['fid']['gmm']:.1f} | — |" in table
    assert row["nll"] is None and "| NLL nats (K=4) |" in table  # an autoencoder has no likelihood
    assert row["genkit"] == genkit.__version__ and row["commit"] == saved["commit"] == results_io.source_commit()

    # a later run of other rows of the same protocol adds to the file; a row run again replaces its old self
    # an entry may set its own latent, and a denoiser's row may skip sampling: its FID cells are —
    protocol.entries = [suite.Entry("ae", {"hidden": 32, "latent": 4}, sample=False), suite.Entry("ae")]
    suite.run(protocol, torch.device("cpu"), out)
    rows = json.loads(out.read_text())["results"]
    assert [r["label"] for r in rows] == ["ae hidden=32 latent=4", "ae"]
    assert rows[0]["fid"] == {} and rows[0]["test_mse"] > row["test_mse"]  # 4 numbers code less than 16
    assert f"| ae hidden=32 latent=4 | {rows[0]['test_mse']:.4f} | — | — | — |" in out.with_suffix(".md").read_text()
    assert rows[1]["test_mse"] == pytest.approx(row["test_mse"], rel=1e-6)  # the same seed, the same numbers
    # a row run on another machine of the same kind names its machine in a column of its own
    saved = json.loads(out.read_text())
    saved["results"][0]["device_name"] = "another cpu"
    table = suite.markdown(saved)
    assert "| img/s | wall s | machine |" in table and "| another cpu |" in table
    assert f"| {saved['device_name']} |" in table and "machine" not in suite.markdown(record)
    # another protocol's file starts afresh; rows that draw no samples need no reference statistics
    protocol.epochs = 1
    protocol.entries = [suite.Entry("ae", {"hidden": 32}, sample=False)]
    monkeypatch.setattr(fid, "reference_statistics", lambda *a, **k: pytest.fail("reference statistics computed"))
    suite.run(protocol, torch.device("cpu"), out)
    assert [r["label"] for r in json.loads(out.read_text())["results"]] == ["ae hidden=32"]


def test_the_binarised_protocol_scores_the_nll_of_binary_test_images(data_dir, fid_weights, tmp_path, monkeypatch):
    scored = []
    real = suite.estimate_nll
    monkeypatch.setattr(suite, "estimate_nll", lambda model, images, k: scored.append(images) or real(model, images, k))
    protocol = suite.Protocol(
        "tiny-binarised",
        epochs=1,
        train_limit=2048,
        test_limit=32,
        fid_samples=32,
        ex_post=(),
        nll_samples=4,
        binarize=True,
        entries=[suite.Entry("vae-conv")],
    )
    out = tmp_path / "mnist-cpu-tiny-binarised.json"
    row = suite.run(protocol, torch.device("cpu"), out)["results"][0]
    (images,) = scored
    assert images.shape == (32, 1, 28, 28) and set(images.unique().tolist()) == {0.0, 1.0}
    assert 0 < row["nll"]["nats"] < 784 * 0.7  # below a coin flip per pixel
    table = out.with_suffix(".md").read_text()
    assert "(dynamically binarised)" in table and f"| {row['nll']['nats']:.2f} ± " in table
    assert 'suite --protocol tiny-binarised --dataset mnist --device cpu --labels "MODEL"`' in table
    assert suite.PROTOCOLS["nll"].binarize and suite.PROTOCOLS["nll"].nll_samples == 1000


def test_a_row_cut_short_resumes_where_it_stopped_with_the_numbers_of_an_uninterrupted_run(
    data_dir, fid_weights, tmp_path, monkeypatch, capsys
):
    protocol = suite.Protocol(
        "tiny-resume",
        epochs=2,
        train_limit=1024,
        test_limit=32,
        fid_samples=32,
        gmm_components=2,  # not rae's own 10: a column of its own
        ex_post=("gmm",),
        entries=[suite.Entry("rae")],  # its own prior is fitted after training: the saved state must hold it
    )
    cpu = torch.device("cpu")
    whole = suite.run(protocol, cpu, tmp_path / "whole.json")["results"][0]
    assert "resumed_at" not in whole and not list((cache_root() / "benchmark-rows").rglob("*.pt"))

    class Killed(Exception):
        pass

    def kill_on(patch, owner, name: str, call: int) -> list[int]:
        """The ``call``-th call of ``owner.name`` stops the run, as a killed job does; returns the calls made."""
        real, calls = getattr(owner, name), []

        def stopping(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise Killed
            return real(*args, **kwargs)

        patch.setattr(owner, name, stopping)
        return calls

    out = tmp_path / "cut.json"
    with monkeypatch.context() as patch:
        kill_on(patch, suite.Trainer, "train_epoch", 2)
        with pytest.raises(Killed):
            suite.run(protocol, cpu, out)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        kill_on(patch, suite.fid, "feature_statistics", 2)  # in the gmm column, after the own prior's
        with pytest.raises(Killed):
            suite.run(protocol, cpu, out)
    assert "resumed at epoch 1 from " in capsys.readouterr().out and not out.exists()
    path = suite.PartialRow(out, protocol.entries[0], {}).path
    saved = load_checkpoint(path)
    assert saved["epoch"] == 2 and set(saved["scores"]["fid"]) == {"prior"} and "psnr" in saved["scores"]
    # a half-done row from other code is not mixed into this code's numbers
    save_checkpoint(path, {**saved, "stamp": {**saved["stamp"], "commit": "0ther"}})
    with pytest.raises(ConfigError, match="half done with other commit 0ther; run the suite from that checkout"):
        suite.PartialRow(out, protocol.entries[0], saved["stamp"]).load()
    save_checkpoint(path, saved)

    with monkeypatch.context() as patch:
        calls = kill_on(patch, suite.fid, "feature_statistics", 0)
        row = suite.run(protocol, cpu, out)["results"][0]
    assert "resumed at scoring (PSNR, FID prior done) from " in capsys.readouterr().out
    assert len(calls) == 1 and row["resumed_at"] == "scoring (PSNR, FID prior done)"  # only the gmm column ran
    assert row["test_mse"] == whole["test_mse"] and row["psnr"] == whole["psnr"]
    assert row["fid"] == pytest.approx(whole["fid"], rel=1e-6) and set(row["fid"]) == {"prior", "gmm"}
    assert row["images_per_second"] > 0 and row["wall_seconds"] > 0 and not path.exists()


def test_rows_of_an_earlier_file_keep_the_machine_they_ran_on(tmp_path):
    out = tmp_path / "mnist-cpu.json"
    rows = [{"label": "ae"}, {"label": "vae-conv", "device_name": "AMD EPYC (x86_64)"}]
    earlier = {"protocol": {"name": "full"}, "device": "cpu", "device_name": "x86_64", "results": rows}
    out.write_text(json.dumps(earlier))
    # a file from before a protocol field existed holds rows of that field's default
    assert suite._earlier_rows(out, {"name": "full", **suite.LATER_FIELDS}, "cpu") == [
        {"label": "ae", "device_name": "x86_64"},  # written before rows named their machine: the file's
        {"label": "vae-conv", "device_name": "AMD EPYC (x86_64)"},
    ]
    assert suite._earlier_rows(out, {"name": "quick", **suite.LATER_FIELDS}, "cpu") == []
    assert suite._earlier_rows(out, {"name": "full", **suite.LATER_FIELDS, "nll_samples": 10}, "cpu") == []
    # another set of ex-post priors only adds or drops columns: the rows stay
    more = {"name": "full", **suite.LATER_FIELDS, "ex_post": ["gmm", "diffusion"]}
    assert [r["label"] for r in suite._earlier_rows(out, more, "cpu")] == ["ae", "vae-conv"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_record_names_the_commit_it_was_measured_at_and_whether_the_code_differed(tmp_path):
    assert results_io.source_commit(tmp_path) is None  # not a git checkout

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}\n")
    git("add", ".")
    git("commit", "-qm", "c")
    head = git("rev-parse", "HEAD")
    assert results_io.source_commit(tmp_path) == head
    (tmp_path / "benchmarks" / "results" / "r.json").write_text('{"rows": 1}\n')  # what a benchmark writes
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert results_io.source_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    changed = results_io.source_commit(tmp_path)
    assert changed.startswith(head + "+changes-") and len(changed) == len(head) + len("+changes-") + 12
    assert results_io.source_commit(tmp_path) == changed  # the same change, the same stamp
    (tmp_path / "code.py").write_text("x = 3\n")
    assert results_io.source_commit(tmp_path) not in (head, changed)  # another change, another stamp


def test_an_ex_post_column_reuses_the_fid_of_the_same_fitted_own_prior():
    rae = genkit.get_model("rae", latent=4)  # its own prior: gmm, 10 components, fitted after training
    assert suite._same_prior(rae.prior, "gmm", {"components": 10})
    assert not suite._same_prior(rae.prior, "gmm", {"components": 5})
    assert not suite._same_prior(rae.prior, "diffusion", {})
    assert not suite._same_prior(genkit.get_model("vae-conv", latent=4).prior, "gmm", {"components": 10})


def test_speed_benchmark_compares_both_loops(data_dir, tmp_path):
    args = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--profile-steps", "2", "--results", str(tmp_path)]
    record = speed.main(args)
    bf16 = record["variants"]["genkit trainer, --amp (bf16 autocast on the CPU)"]
    for loop in (record["plain_dataloader"], record["genkit_trainer"], bf16):
        assert loop["images_per_second"] > 0 and loop["test_loss"] > 0
    assert record["speedup"] == pytest.approx(
        record["genkit_trainer"]["images_per_second"] / record["plain_dataloader"]["images_per_second"]
    )
    table = (tmp_path / "speed-cpu.md").read_text()
    assert (tmp_path / "speed-cpu.json").is_file() and "Speed-up (genkit / plain)" in table
    # every faster variant is checked against the loss tolerance too: bf16 may change the training
    far = {**record, "variants": {"far": {**bf16, "test_loss": record["plain_dataloader"]["test_loss"] * 1.1}}}
    line = next(line for line in speed.markdown(far).splitlines() if line.startswith("far: "))
    assert "differs by 10.0% (tolerance 5%: OUTSIDE tolerance" in line
    profile = record["genkit_trainer"]["profile"]
    names = [op["name"] for op in profile["operators"]]
    assert any("conv" in name for name in names) and len(names) == 8  # convolutions are among the top operators
    shares = [op["share"] for op in profile["operators"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert profile["device_busy"] is None and f"| `{names[0]}` |" in table


def test_rd_benchmark_measures_codecs_and_genkit_alike(image_folder, tmp_path, tiny_images):
    from benchmarks import rd
    from genkit.cli import main

    run = tmp_path / "ae"
    small = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16", "--quiet"]
    assert main(["run", "ae", "--latent", "4", *small, "--dataset", str(image_folder), "--out", str(run)]) == 0
    images = (tiny_images[:16] * 255).round() / 255  # 8-bit images, as datasets hold them
    points = rd.codec_points(images) + rd.genkit_points(run, rd.Entry("ae", "ae", ("ae",), (0.5, 4.0)), images)
    by_method = {p.method: p for p in points}
    assert by_method["PNG lossless"].lossless and by_method["bz2 -9 of the raw set"].lossless
    assert by_method["WEBP q90"].psnr > by_method["WEBP q0"].psnr and by_method["JPEG q5"].bytes_per_image > 100
    fine, coarse = by_method["genkit ae step 0.5"], by_method["genkit ae step 4"]
    assert coarse.bytes_per_image < fine.bytes_per_image  # a coarser step, fewer bytes
    # matched-PSNR interpolation is log-linear in bytes between a curve's points
    curve = [rd.Point("a", "X", 100.0, 20.0), rd.Point("b", "X", 400.0, 30.0)]
    assert rd.bytes_at(curve, "X", 25.0) == pytest.approx(200.0) and rd.bytes_at(curve, "X", 35.0) is None
    record = {"dataset": "d", "images": 16, "device_name": "cpu", "commands": ["c"], "runs": {"ae": ["run", "ae"]},
              "points": [p.__dict__ for p in points]}  # fmt: skip
    table = rd.markdown(record)
    assert "| PNG lossless |" in table and "- `genkit run ae`" in table and "Made by `c`." in table
    assert len([line for line in table.splitlines() if line.startswith("- WEBP ")]) == 7  # each WebP point judged
    png = by_method["PNG lossless"]
    assert f"| lossless, {8 * png.bytes_per_image / 784:.2f} bits/pixel |" in table
    # a VAE with the logistic likelihood gives a lossless point, decoded and checked by the benchmark itself
    vae = tmp_path / "vae"
    logistic = ["--set", "loss.likelihood=logistic", "--latent", "4"]
    assert main(["run", "vae-conv", *logistic, *small, "--dataset", str(image_folder), "--out", str(vae)]) == 0
    (point,) = rd.genkit_points(vae, rd.Entry("v", "lossless", ("vae-conv",), lossless=True), images)
    assert point.lossless and point.family == "genkit:lossless" and point.bytes_per_image > 0
    rd.plot(record, tmp_path / "rd.png")
    assert (tmp_path / "rd.png").stat().st_size > 5000


def test_rd_judges_each_webp_point_by_genkits_smallest_file_that_is_as_good():
    from benchmarks.rd import Point, best_genkit_beating

    webp = [Point("WEBP q0", "WEBP", 96.0, 23.0), Point("WEBP q50", "WEBP", 200.0, 36.0)]
    webp.append(Point("WEBP lossless", "WEBP", 180.0, None))
    ours = [Point("genkit c", "genkit:c", 12.0, 23.5, "c"), Point("genkit c2", "genkit:c", 30.0, 24.0, "c2")]
    lossless = Point("genkit v bits-back", "genkit:lossless", 170.0, None, "v")
    assert best_genkit_beating(ours, webp[0]) is ours[0]  # the smallest of the two that are as good
    assert best_genkit_beating(ours, webp[1]) is None and best_genkit_beating(ours, webp[2]) is None
    assert best_genkit_beating([*ours, lossless], webp[1]) is lossless  # exact pixels in fewer bytes
    assert best_genkit_beating([*ours, lossless], webp[2]) is lossless


def test_rd_keeps_the_entries_it_did_not_run_from_the_previous_results(tmp_path, capsys):
    import argparse
    import json

    from benchmarks import rd

    # results written before points named their entry: runs as a list, the entry read from the method
    old = {
        "dataset": "mnist", "images": 2000, "command": "python -m benchmarks.rd",
        "runs": [["run", "ae", "--latent", "8", "--dataset", "mnist", "--epochs", "10"],
                 ["run", "vq-vae", "--latent", "16", "--dataset", "mnist", "--epochs", "10"]],
        "points": [{"method": "PNG lossless", "family": "PNG", "bytes_per_image": 268.0, "psnr": None},
                   {"method": "genkit ae-latent8 step 0.25", "family": "genkit:ae-latent8", "bytes_per_image": 4.2,
                    "psnr": 19.0},
                   {"method": "genkit vq-vae", "family": "genkit:vq-vae", "bytes_per_image": 7.7, "psnr": 20.9}],
    }  # fmt: skip
    path = tmp_path / "rd-mnist-cpu.json"
    path.write_text(json.dumps(old))
    args = argparse.Namespace(dataset="mnist", images=2000, epochs=10)
    kept = rd.previous_entries(path, args, {"vq-vae"})
    assert kept["commands"] == ["python -m benchmarks.rd"] and list(kept["runs"]) == ["ae-latent8"]
    assert [(p.method, p.entry) for p in kept["points"]] == [("genkit ae-latent8 step 0.25", "ae-latent8")]
    assert rd.previous_entries(path, args, {"vq-vae", "ae-latent8"}) is None  # all made again: nothing to keep
    # other epochs: nothing is kept, and it says so
    assert rd.previous_entries(path, argparse.Namespace(dataset="mnist", images=2000, epochs=30), set()) is None
    assert "not merging" in capsys.readouterr().out
    # a record cut off mid-write is no record: the run starts a new one instead of failing
    path.write_text(json.dumps(old)[:40])
    assert rd.previous_entries(path, args, set()) is None


def test_an_earlier_record_reads_as_none_when_missing_or_corrupt(tmp_path):
    path = tmp_path / "mnist-cpu.json"
    assert results_io.read_record(path) is None
    path.write_text('{"results": [')
    assert results_io.read_record(path) is None
    assert suite._earlier_rows(path, {}, "cpu") == []
    path.write_text('{"results": []}')
    assert results_io.read_record(path) == {"results": []}


def test_rd_benchmark_refuses_an_unknown_model(capsys):
    from benchmarks import rd

    with pytest.raises(SystemExit) as exit_info:
        rd.main(["--models", "compressor-lmbda0.002,nope"])
    assert exit_info.value.code == 2
    assert "unknown --models nope: choose from ae-latent8" in capsys.readouterr().err


def test_rd_trains_again_a_run_that_was_cut_off(tmp_path, monkeypatch):
    import json

    from benchmarks import rd

    monkeypatch.setattr(rd, "RUNS", tmp_path)
    calls = []
    monkeypatch.setattr(rd.subprocess, "run", lambda command, check: calls.append(command))
    run = tmp_path / "mnist-ae-10ep"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1}]}))  # killed after an epoch
    assert rd.train_run("ae", ["ae"], "mnist", 10, "cpu") == run and len(calls) == 1
    (run / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1}], "test": {"mse": 0.01}}))  # finished
    assert rd.train_run("ae", ["ae"], "mnist", 10, "cpu") == run and len(calls) == 1


def test_defaults_benchmark_scores_every_setting_on_held_out_training_images(data_dir, tmp_path):
    from benchmarks import defaults, heldout

    args = ["--models", "ae", "--limit", "600", "--holdout", "100", "--epochs", "1", "--device", "cpu"]
    record = defaults.main([*args, "--results", str(tmp_path)])
    assert [r["setting"] for r in record["results"]] == list(defaults.CANDIDATES)
    assert record["train_images"] == 500 and record["validation_images"] == 100
    assert all(r["validation_loss"] > 0 and 0 < r["validation_mse"] < 1 for r in record["results"])
    table = (tmp_path / "defaults-mnist-cpu.md").read_text()
    winner = defaults.best(record, "ae")
    assert table.count("| **") == 1 and f"| **{winner}**" in table
    assert f"| {record['current']} (default) |" in table or f"**{record['current']}** (default)" in table
    fit, valid = heldout.holdout(genkit.data.ImageData(torch.arange(5.0), torch.arange(5), "x", ()), 2)
    assert fit.images.tolist() == [0, 1, 2] and valid.images.tolist() == [3, 4]
    with pytest.raises(ValueError, match="--holdout must be between 1 and 2, got 3"):
        heldout.holdout(fit, 3)


def test_a_holdout_the_training_images_cannot_give_is_a_usage_error(data_dir, tmp_path, capsys):
    from benchmarks import defaults, denoiser

    for main in (defaults.main, denoiser.main):
        with pytest.raises(SystemExit) as exit:
            main(["--limit", "300", "--holdout", "300", "--device", "cpu", "--results", str(tmp_path)])
        assert exit.value.code == 2
        assert "error: --holdout must be between 1 and 299, got 300" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_likelihood_benchmark_scores_each_likelihood_by_held_out_mse(data_dir, tmp_path, capsys):
    from benchmarks import likelihood

    args = ["--limit", "300", "--holdout", "100", "--epochs", "1", "--device", "cpu", "--results", str(tmp_path)]
    record = likelihood.main([*args, "--candidates", "bernoulli,gaussian"])
    assert record["train_images"] == 200 and record["validation_images"] == 100
    results = {r["candidate"]: r for r in record["results"]}
    assert [r["options"] for r in results.values()] == [
        {"latent": 16, "loss.likelihood": "bernoulli"},
        {"latent": 16, "loss.likelihood": "gaussian"},
    ]
    mse = [r["validation_mse"] for r in results.values()]
    assert all(0 < m < 1 for m in mse) and mse[0] != mse[1]  # the option reached the loss: different training
    table = (tmp_path / "likelihood-mnist-cpu.md").read_text()
    assert table.count("| **") == 1 and f"| **{likelihood.best(record)}** |" in table
    assert 'python -m benchmarks.likelihood --dataset mnist --epochs 1 --candidates "bernoulli,gaussian"' in table
    assert "| machine |" not in table  # one machine measured them all: the title names it
    # a run of one candidate remakes its result and keeps the other's, each with the commit and machine that
    # measured it (results from before results named their machine take the record's)
    old = [{k: v for k, v in r.items() if k != "device_name"} | {"commit": "0ld"} for r in record["results"]]
    (tmp_path / "likelihood-mnist-cpu.json").write_text(json.dumps({**record, "results": old, "device_name": "Old"}))
    again = likelihood.main([*args, "--candidates", "gaussian"])
    assert [r["candidate"] for r in again["results"]] == ["bernoulli", "gaussian"]
    assert again["results"][0] == {**results["bernoulli"], "commit": "0ld", "device_name": "Old"}
    assert again["results"][1]["commit"] == again["commit"] != "0ld"
    assert again["results"][1]["device_name"] == again["device_name"] != "Old"
    table = (tmp_path / "likelihood-mnist-cpu.md").read_text()
    assert 'python -m benchmarks.likelihood --dataset mnist --epochs 1 --candidates "bernoulli,gaussian"' in table
    # two machines: wall seconds do not compare, so each result names its own
    assert f"(Old and {again['device_name']}, cpu)" in table and "| wall s | machine |" in table
    assert "| Old |" in table and f"| {again['device_name']} |" in table
    # other settings (here the held-out images) make the earlier results no evidence for this run
    other = likelihood.main([*args[:2], "--holdout", "50", *args[4:], "--candidates", "gaussian"])
    assert [r["candidate"] for r in other["results"]] == ["gaussian"]
    with pytest.raises(SystemExit) as exit:
        likelihood.main([*args, "--candidates", "poisson"])
    assert exit.value.code == 2
    assert "unknown candidate(s) poisson; known: bernoulli, gaussian" in capsys.readouterr().err


def test_denoiser_benchmark_scores_every_candidate_on_noisy_held_out_training_images(data_dir, tmp_path):
    from benchmarks import denoiser

    args = ["--limit", "300", "--holdout", "100", "--epochs", "1", "--device", "cpu", "--results", str(tmp_path)]
    record = denoiser.main(args)
    assert [r["candidate"] for r in record["results"]] == list(denoiser.CANDIDATES)
    assert record["train_images"] == 200 and record["validation_images"] == 100
    assert all(r["psnr_noisy"] == pytest.approx(9.4, abs=0.2) and r["psnr_denoised"] > 0 for r in record["results"])
    table = (tmp_path / "denoiser-mnist-cpu.md").read_text()
    assert table.count("| **") == 1 and f"| **{denoiser.best(record)}** |" in table
    assert "python -m benchmarks.denoiser --dataset mnist --noise gaussian:0.5 --device cpu" in table
    with pytest.raises(SystemExit):
        denoiser.main(["--candidates", "fcn 3x3", "--results", str(tmp_path)])


def test_priors_benchmark_scores_every_prior_by_fid_against_held_out_training_images(
    data_dir, fid_weights, tmp_path, monkeypatch, capsys
):
    from benchmarks import priors

    small = {"gmm components=2": ("gmm", {"components": 2}),
             "diffusion train_steps=30": ("diffusion", {"train_steps": 30, "sample_steps": 5}),
             "categorical": ("categorical", {})}  # fmt: skip
    monkeypatch.setattr(priors, "CANDIDATES", small)
    args = ["--limit", "300", "--holdout", "100", "--epochs", "1", "--samples", "40", "--device", "cpu"]
    record = priors.main([*args, "--results", str(tmp_path)])
    assert record["train_images"] == 200 and record["validation_images"] == 100 and record["samples"] == 40
    # a prior over quantised codes does not apply to an ae's codes: skipped, with the reason
    assert "skipped categorical: prior categorical: the codes hold" in capsys.readouterr().err
    assert [r["candidate"] for r in record["results"]] == list(small)[:2]
    assert [r["prior"] for r in record["results"]] == ["gmm", "diffusion"]
    assert all(math.isfinite(r["fid"]) and r["fid"] > 0 and r["fit_seconds"] >= 0 for r in record["results"])
    assert 0 < record["validation_mse"] < 1
    table = (tmp_path / "priors-ae-mnist-cpu.md").read_text()
    winner = priors.best(record)
    assert winner == min(record["results"], key=lambda r: r["fid"])["candidate"]
    assert table.count("| **") == 1 and f"| **{winner}** |" in table
    assert (
        "python -m benchmarks.priors --dataset mnist --model ae --epochs 1 --holdout 100 --samples 40 --device cpu"
        in table
    )
    assert "fit steps" not in table  # no prior here stops its fitting early
    # a study of a subset names it, so that its command reproduces it
    subset = priors.markdown({**record, "candidates": ["gmm components=2"]})
    assert '--samples 40 --candidates "gmm components=2" --device cpu`' in subset
    for bad, message in ((["--candidates", "flow"], "unknown candidate(s) flow; known: gmm components=2"),
                         (["--samples", "1"], "--samples must be at least 2, got 1")):  # fmt: skip
        with pytest.raises(SystemExit) as exit:
            priors.main([*bad, "--results", str(tmp_path / "none")])
        assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def _suite_row(label, model, mse, fid, psnr, noise=None, options=None):
    return {"label": label, "model": model, "options": options or {}, "train_noise": noise, "test_mse": mse,
            "fid": fid, "prior": "normal", "psnr": {"gaussian:0.5": {"noisy": 9.4, "output": psnr}}}  # fmt: skip


def test_scoreboard_gives_every_target_a_verdict_from_the_rows_it_reads(tmp_path):
    from benchmarks import scoreboard

    # no full-protocol results yet: one line that says which command makes them
    with pytest.raises(SystemExit) as refused:
        scoreboard.main(["--results", str(tmp_path), "--device", "cpu"])
    assert "mnist-cpu.json does not exist: run python -m benchmarks.suite --protocol full" in str(refused.value)

    head = {"protocol": {"name": "full"}, "fid_protocol": {}, "device": "cpu", "device_name": "x86_64",
            "torch": "2", "genkit": "0"}  # fmt: skip
    full = {**head, "results": [
        _suite_row("ae", "ae", 0.0039, {"prior": 90.0, "gmm": 7.5, "diffusion": 9.0}, 12.0),
        _suite_row("vae-conv", "vae-conv", 0.007, {"normal": 16.0, "gmm": 20.0}, 11.0),  # a row from before "prior"
        _suite_row("ae (trained on gaussian:0.5)", "ae", 0.001, {"gmm": 3.0}, 21.9, noise="gaussian:0.5"),
    ]}  # fmt: skip
    nll = {**head, "protocol": {"name": "nll", "nll_samples": 1000},
           "results": [{"label": "vae-conv", "nll": {"nats": 84.0, "stderr": 0.5}},
                       {"label": "iwae prior=vamp", "nll": {"nats": 82.5, "stderr": 0.7}}]}  # fmt: skip
    # the nll protocol's rows alone (nox -s bench-nll) make a scoreboard: every full-protocol figure is due
    (tmp_path / "mnist-cpu-nll.json").write_text(json.dumps(nll))
    scoreboard.main(["--results", str(tmp_path), "--device", "cpu"])
    table = (tmp_path / "mnist-cpu-scoreboard.md").read_text()
    assert "| vae-conv | not run | not run | not run | not run | not run | 84.00 ± 0.50 |" in table
    assert "| test NLL on binarised MNIST <= 82.9 nats | 82.50 | iwae prior=vamp | met |" in table
    assert "| ae test MSE <= 0.004 at latent 16 | no row yet | — | missed |" in table

    (tmp_path / "mnist-cpu.json").write_text(json.dumps(full))
    scoreboard.main(["--results", str(tmp_path), "--device", "cpu"])
    table = (tmp_path / "mnist-cpu-scoreboard.md").read_text()
    verdicts = {
        t["target"]: (t["measured"], t["met"])
        for t in json.loads((tmp_path / "mnist-cpu-scoreboard.json").read_text())["targets"]
    }
    assert verdicts == {
        # the lowest FID of any row through either ex-post prior: the denoiser's, through the GMM
        "FID with an ex-post prior (gmm or diffusion) <= 8.0": (3.0, True),
        "vae-conv FID from N(0,I) <= 15": (16.0, False),
        "ae test MSE <= 0.004 at latent 16": (0.0039, True),  # the denoiser's 0.001 does not count
        "denoiser PSNR at gaussian:0.5 >= 22 dB": (21.9, False),
        "test NLL on binarised MNIST <= 82.9 nats": (82.5, True),
    }
    assert "| ae test MSE <= 0.004 at latent 16 | 0.0039 | ae | met |" in table
    assert "| vae-conv | 0.0070 | 16.0 | 20.0 | — | 11.0 | 84.00 ± 0.50 | FID N(0,I) 19.21 (Ghosh)" in table
    # every entry of the full protocol has a row; those not measured yet say so, and the NLL protocol's too
    labels = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ") and " | not run" in line]
    assert "aae" in labels and "vq-vae" in labels and "ae" not in labels
    assert "| iwae | not run | not run | not run | not run | not run | not run | NLL 85.54 (Burda) |" in table
    # a denoiser's row has no published anchor: the papers' figures are of sampling and likelihood
    assert "| ae (trained on gaussian:0.5) | 0.0010 | — | 3.0 | — | 21.9 | — | — |" in table
    assert "| ae | 0.0039 | 90.0 | 7.5 | 9.0 | 12.0 | — | FID gmm 10.66 (Ghosh) |" in table
    # an entry of the nll protocol only has a row too, so that the best NLL is in the table: no full-protocol figures
    assert "| iwae prior=vamp | — | — | — | — | — | 82.50 ± 0.70 | NLL 85.54 (Burda) |" in table
    assert table.index("| vq-vae |") < table.index("| iwae prior=vamp | —")  # after the full protocol's rows

    # a broken results file: one line that says how to mend it
    (tmp_path / "mnist-cpu-nll.json").write_text("{")
    with pytest.raises(SystemExit) as refused:
        scoreboard.main(["--results", str(tmp_path), "--device", "cpu"])
    assert "mnist-cpu-nll.json is not valid JSON" in str(refused.value)


def test_committed_scoreboards_match_the_committed_results(tmp_path):
    import shutil

    from benchmarks import scoreboard
    from benchmarks.results_io import RESULTS

    boards = sorted(RESULTS.glob("*-scoreboard.md"))
    assert boards, "no scoreboard is committed: run python -m benchmarks.scoreboard --dataset mnist --device cpu"
    for board in boards:
        stem = board.name.removesuffix("-scoreboard.md")
        for name in (f"{stem}.json", f"{stem}-nll.json"):
            if (RESULTS / name).exists():
                shutil.copy(RESULTS / name, tmp_path / name)
        dataset, device = stem.rsplit("-", 1)
        scoreboard.main(["--results", str(tmp_path), "--dataset", dataset, "--device", device])
        assert (tmp_path / board.name).read_text() == board.read_text(), (
            f"{board.name} is older than the results it reads: run python -m benchmarks.scoreboard "
            f"--dataset {dataset} --device {device}"
        )


def test_every_model_genkit_ships_is_benchmarked():
    # the full protocol has an entry (so its tables a row) for every built-in model; the compressor, whose
    # figures are rate and distortion, is measured against the codecs by the compression benchmark instead
    from benchmarks import rd
    from genkit import registry

    builtin = {name for name in genkit.list_models() if registry.models.info(name).distribution == "genkit"}
    full = {entry.model for entry in suite.PROTOCOLS["full"].entries}
    assert builtin - full == {"compressor"}, "add the new model to benchmarks.suite.PROTOCOLS['full']"
    assert "compressor" in {entry.args[0] for entry in rd.MODELS}
    for dataset in ("mnist", "fashion-mnist"):
        rows = {row["label"] for row in json.loads((results_io.RESULTS / f"{dataset}-cpu.json").read_text())["results"]}
        assert rows == {entry.label for entry in suite.PROTOCOLS["full"].entries}, dataset
