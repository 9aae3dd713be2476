"""`genkit run` and the verbs on a finished run, through the real CLI entry point."""

import json

import numpy as np
import pytest
import torch
from torchvision.utils import save_image

from genkit.cli import main
from genkit.config import DataConfig

RUN_FILES = {
    "config.json",
    "model.safetensors",
    "checkpoint.pt",
    "metrics.json",
    "samples.png",
    "latent.png",
    "reconstructions.png",
    "denoising.png",
    "interpolation.png",
    "loss.png",
}
SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "2", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One small run of vae-conv (latent 2) on generated images, shared by the verb tests."""
    from tests.conftest import ROOT  # noqa: F401  (keeps the import path of the test package)

    tmp = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    images = tmp / "images"
    images.mkdir()
    for i in range(48):
        save_image(torch.rand(1, 28, 28, generator=g) * (i % 3) / 2, images / f"{i:02d}.png")
    run_dir = tmp / "run"
    code = main(["run", "vae-conv", "--latent", "2", "--dataset", str(images), "--out", str(run_dir), *SMALL])
    assert code == 0
    return run_dir, images


def test_run_writes_every_file(finished_run):
    run_dir, _ = finished_run
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert {"mse", "psnr_noisy", "psnr_denoised", "noise"} <= set(metrics["test"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "vae-conv" and config["model_config"]["latent"] == 2
    for name in RUN_FILES:
        if name.endswith(".png"):
            assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_verb(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    assert main(["sample", str(run_dir), "-n", "9", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file() and "wrote 9 samples" in capsys.readouterr().out


def test_encode_decode_round_trip_reports_rate(finished_run, tmp_path, capsys):
    run_dir, images = finished_run
    files = sorted(str(p) for p in images.iterdir())[:5]
    codes = tmp_path / "codes.npz"
    assert main(["encode", str(run_dir), *files, "-o", str(codes)]) == 0
    out = capsys.readouterr().out
    # latent 2 as float16 = 4 bytes against 784 raw 8-bit pixels
    assert "4 bytes/image vs 784 raw (196.0x smaller)" in out and "reconstruction PSNR" in out
    with np.load(codes) as data:
        assert data["codes"].shape == (5, 2) and data["codes"].dtype == np.float16
    assert main(["decode", str(run_dir), str(codes), "-o", str(tmp_path / "dec")]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == sorted(p.split("/")[-1] for p in files)


def test_denoise_verb_reports_psnr(finished_run, tmp_path, capsys):
    run_dir, images = finished_run
    files = sorted(str(p) for p in images.iterdir())[:3]
    assert main(["denoise", str(run_dir), *files, "--noise", "gaussian:0.5", "-o", str(tmp_path / "d")]) == 0
    assert "dB noisy ->" in capsys.readouterr().out
    assert len(list((tmp_path / "d").glob("*-denoised.png"))) == 3


def test_wrong_image_size_is_one_line(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    save_image(torch.rand(3, 32, 32), tmp_path / "big.png")
    assert main(["encode", str(run_dir), str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is 32x32 RGB, but the model takes 28x28 grayscale" in err


def test_resume_extends_a_finished_run(finished_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    assert main(["run", "--resume", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    assert "after epoch 2 of 3" in capsys.readouterr().out
    assert len(json.loads((run_dir / "metrics.json").read_text())["epochs"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "vae-conv", "--latent", "0"], "'--latent': 0 is not in the range x>=1"),
        (["run", "vae-conv", "--epochs", "-1"], "'--epochs'"),
        (["run", "vae-cnv"], "did you mean vae-conv"),
        (["run", "vae-conv", "--noise", "gaussian"], "write NAME:LEVEL"),
        (["run", "vae-conv", "--dataset", "/nonexistent/folder"], "unknown dataset"),
        (["run"], "name a MODEL"),
        (["run", "--resume", "/nonexistent/run"], "does not exist"),
        (["sample", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_sample_from_a_fitted_gmm_prior_is_cached(finished_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    assert main(["sample", str(run_dir), "--prior", "gmm", "-n", "8", "-o", str(tmp_path / "a.png")]) == 0
    cached = run_dir / "prior-gmm.safetensors"
    assert cached.is_file() and "gmm prior:" in capsys.readouterr().out
    stamp = cached.stat().st_mtime_ns
    assert main(["sample", str(run_dir), "--prior", "gmm", "-n", "8", "-o", str(tmp_path / "b.png")]) == 0
    assert cached.stat().st_mtime_ns == stamp, "the fitted prior should be reused, not fitted again"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_parts_chosen_on_the_command_line_are_recorded_and_reload(data_dir, tmp_path, capsys):
    out = tmp_path / "R"
    args = ["run", "vae-conv", "--prior", "vamp", "--loss", "iwae", "--set", "loss.k=3", "--set", "prior.components=5"]
    code = main([*args, "--limit", "256", "--epochs", "1", "--out", str(out), "--quiet", "--data-dir", str(data_dir)])
    assert code == 0, capsys.readouterr().err
    parts = json.loads((out / "config.json").read_text())["parts"]
    assert parts["prior"] == {"name": "vamp", "options": {"components": 5}}
    assert parts["loss"]["name"] == "iwae" and parts["loss"]["options"]["k"] == 3
    assert main(["sample", str(out), "-n", "16"]) == 0
    assert (out / "samples-vamp-16.png").is_file()
    from genkit.checkpoint import load_checkpoint, load_model

    model = load_model(out)  # the learned pseudo-inputs are part of the saved weights
    trained = load_checkpoint(out / "checkpoint.pt")["model"]["prior.pseudo_inputs"]
    assert torch.equal(model.prior.pseudo_inputs, trained)
    assert model.prior.name == "vamp" and model.loss_fn.name == "iwae" and model.loss_fn.config.k == 3


def test_an_incompatible_composition_fails_before_training(tmp_path, capsys):
    out = tmp_path / "R"
    code = main(["run", "ae", "--loss", "elbo", "--limit", "64", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "loss elbo cannot work with encoder conv" in err and "--set encoder.head=gaussian" in err
    assert not out.exists()
    assert main(["run", "vae-conv", "--prior", "nope", "--out", str(out)]) == 2
    assert "unknown priors plugin 'nope'" in capsys.readouterr().err
    assert main(["run", "vae-conv", "--set", "loss.k=3", "--out", str(out)]) == 2
    assert "unknown option(s) for loss elbo: k" in capsys.readouterr().err
    assert main(["run", "vae-conv", "--set", "colour.k=3", "--out", str(out)]) == 2
    assert "write KEY or PART.KEY" in capsys.readouterr().err


def test_an_ex_post_prior_is_fitted_after_training_and_saved(finished_run, tmp_path, capsys):
    _, images = finished_run
    out = tmp_path / "R"
    args = ["run", "ae", "--prior", "gmm", "--set", "prior.components=2", "--dataset", str(images), "--out", str(out)]
    assert main([*args, *SMALL]) == 0
    assert "fitted the gmm prior" in capsys.readouterr().out
    from genkit.checkpoint import load_model

    model = load_model(out)
    assert model.prior.name == "gmm" and bool(model.prior.fitted) and model.prior.components == 2


def test_repeating_a_command_says_where_the_new_run_goes_and_how_to_resume(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "ae", "--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--quiet"]
    assert main([*args, "--dataset", str(image_folder)]) == 0
    assert "earlier run" not in capsys.readouterr().out
    for number, earlier in ((2, "runs/ae-images"), (3, "runs/ae-images-2")):
        assert main([*args, "--dataset", str(image_folder)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first == (
            f"{earlier} holds an earlier run, so this new one goes to runs/ae-images-{number} "
            f"(to train the earlier one further instead: genkit run --resume {earlier} --epochs N)"
        )


def test_pictures_name_their_rows_and_say_what_the_model_was_trained_for(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    import genkit
    from genkit import report

    model = genkit.get_model("ae", latent=2, channels=4, hidden=16).eval()
    images = torch.rand(4, 1, 28, 28)
    noise = genkit.get_noise("gaussian:0.5")
    with mock.patch.object(report, "_labelled_rows") as rows:
        report.save_denoising(model, images, noise, tmp_path / "a.png")
        report.save_denoising(model, images, noise, tmp_path / "b.png", trained_on="gaussian:0.3")
        report.save_reconstructions(model, images, tmp_path / "c.png")
    (untrained, trained, reconstructions) = [call.args for call in rows.call_args_list]
    assert untrained[2] == ["clean", "noisy (gaussian:0.5)", "model output"]
    assert "ae was not trained as a denoiser" in untrained[3] and "--noise" in untrained[3]
    assert "trained as a denoiser on gaussian:0.3" in trained[3]
    assert reconstructions[2] == ["test image", "reconstruction"]
    report.save_denoising(model, images, noise, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_loss_curves_put_the_total_first_with_whole_epochs_and_labelled_axes(tmp_path, monkeypatch):
    from genkit import report

    history = [{"epoch": e, "train_kl": 1.0 / e, "train_reconstruction": 9.0 / e, "train_loss": 10.0 / e,
                "train_seconds": 1.0, "test_loss": 11.0 / e} for e in (1, 2, 3)]  # fmt: skip
    figures = []
    real = report._save_figure
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: figures.append(fig) or real(fig, path))
    report.save_loss_curves(history, tmp_path / "loss.png")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["total loss", "kl", "reconstruction"]
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in axes)
    assert all(float(t).is_integer() for ax in axes for t in ax.get_xticks())
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_latent_codes_are_drawn_by_tsne_or_pca_and_the_title_says_which(tmp_path, monkeypatch):
    import genkit
    from genkit import report
    from genkit.data import ImageData

    g = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(40, 10, generator=g), torch.randn(40, 10, generator=g) + 8])
    for method, axis in (("tsne", "t-SNE "), ("pca", "PC")):
        points, name = report.project_2d(clusters, method)
        assert name == axis and points.shape == (80, 2)
        a, b = points[:40].mean(0), points[40:].mean(0)
        assert (a - b).norm() > 2 * max(points[:40].std(0).norm(), points[40:].std(0).norm())  # apart
    assert report.project_2d(clusters[:, :2], "tsne")[1] == "z"
    # identical codes (a collapsed model) would crash t-SNE in native code: their first two coordinates instead
    same = torch.zeros(80, 10)
    same[:40, 0] = 1
    assert report.project_2d(same, "tsne")[1] == "z" and report.project_2d(same, "tsne")[0].shape == (80, 2)
    titles = []
    real = report._save_figure
    monkeypatch.setattr(
        report, "_save_figure", lambda fig, path: titles.append(fig.axes[0].get_title()) or real(fig, path)
    )
    model = genkit.get_model("vae-conv", latent=3, channels=4, hidden=16).eval()
    data = ImageData(torch.rand(30, 1, 28, 28), torch.arange(30) % 3, "x", ["a", "b", "c"])
    report.save_latent_plot(model, data, tmp_path / "t.png")
    report.save_latent_plot(model, data, tmp_path / "p.png", method="pca")
    assert "t-SNE embedding" in titles[0] and "principal components (PCA)" in titles[1]


def test_run_records_the_latent_plot_choice(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "run",
        "ae",
        "--set",
        "channels=4",
        "--set",
        "hidden=16",
        "--epochs",
        "1",
        "--quiet",
        "--latent-plot",
        "pca",
    ]
    assert main([*args, "--dataset", str(image_folder), "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["logging"] == {"tensorboard": False, "latent_plot": "pca"}
    assert main([*args[:-1], "umap", "--out", str(tmp_path / "x")]) == 2
    assert "'umap' is not one of 'tsne', 'pca'" in capsys.readouterr().err


def test_the_closing_line_calls_an_output_denoised_only_for_a_denoiser(tmp_path):
    from genkit.run import start_run
    from genkit.train import TrainConfig
    from tests.fault_helpers import TINY, write_images

    images = write_images(tmp_path / "images", 32)
    config = TrainConfig(epochs=1, batch_size=16, progress=False)
    for noise, said in ((None, "dB model output, not trained as a denoiser (gaussian:0.5)"),
                        ("gaussian:0.3", "dB denoised (gaussian:0.3)")):  # fmt: skip
        lines: list[str] = []
        start_run(
            "ae", dict(TINY), config, DataConfig(str(images), noise=noise), out=tmp_path / str(noise), log=lines.append
        )
        assert lines[-1].startswith("done: test MSE ") and said in lines[-1]


def test_a_model_no_better_than_the_mean_image_is_called_untrained_before_the_closing_line(tmp_path):
    from genkit.metrics import mean_image_mse
    from genkit.run import start_run
    from genkit.train import TrainConfig
    from tests.fault_helpers import TINY, write_images

    images = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    assert mean_image_mse(images) == pytest.approx(0.125)  # (0.5² + 0.5² + 0 + 0) / 4
    lines: list[str] = []
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-12, progress=False)  # the untrained net's grey images
    images_dir = str(write_images(tmp_path / "images", 32))
    start_run("ae", dict(TINY), config, DataConfig(images_dir), out=tmp_path / "R", log=lines.append)
    warning, done = lines[-2:]
    assert warning.startswith("warning: test MSE ") and "no better than the mean test image's" in warning
    assert "see reconstructions.png" in warning and (tmp_path / "R" / "reconstructions.png").is_file()
    assert done.startswith("done: test MSE ")
