"""Run folders written by genkit 0.1 (config.json format 1) load, sample and resume (see tests/data/genkit-0.1);
those of later formats load as they were trained."""

import json
import shutil
from pathlib import Path

import torch

import genkit
from genkit.checkpoint import FORMAT, load_model, read_json, save_run
from genkit.cli import main
from genkit.config import DataConfig
from genkit.losses import MARGIN
from genkit.run import resume_run

OLD = Path(__file__).parent / "data" / "genkit-0.1"
X = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def test_a_finished_beta_vae_run_reloads_with_its_parts_and_weights():
    model = load_model(OLD / "beta-vae-run")
    parts = {kind: model.part(kind).name for kind in ("encoder", "decoder", "prior", "loss")}
    assert parts == {"encoder": "conv", "decoder": "conv", "prior": "normal", "loss": "elbo"}
    assert model.encoder.config.channels == 4 and model.decoder.config.hidden == 16
    assert model.loss_fn.config.beta == 2.0 and model.loss_fn.config.kl_warmup == 2  # was a training setting
    reference = torch.load(OLD / "beta-vae-run" / "reference.pt", weights_only=True)
    torch.testing.assert_close(model.reconstruct(X), reference["recon"])


def test_an_ae_saved_with_a_fitted_gmm_prior_reloads_and_samples_the_same():
    model = load_model(OLD / "ae-gmm")
    assert model.prior.name == "gmm" and bool(model.prior.fitted) and model.prior.components == 10
    reference = torch.load(OLD / "ae-gmm" / "reference.pt", weights_only=True)
    torch.testing.assert_close(model.reconstruct(X), reference["recon"])
    torch.testing.assert_close(model.sample(4, torch.Generator().manual_seed(1)), reference["samples"])


def test_a_format_1_run_resumes_and_is_then_written_in_the_present_format(image_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD / "beta-vae-run", run)
    config = read_json(run / "config.json")
    config["data"].update(dataset=str(image_folder), data_dir=None)  # the recorded MNIST path is another machine's
    (run / "config.json").write_text(json.dumps(config))
    resume_run(run, epochs=2, log=lambda _: None)
    metrics = read_json(run / "metrics.json")
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2] and metrics["test"]["noise"] == "gaussian:0.3"
    model = load_model(run)
    assert model.loss_fn.config.kl_warmup == 2 and model.loss_fn.config.beta == 2.0
    config = read_json(run / "config.json")
    assert config["format"] == FORMAT and config["data"]["noise"] == "gaussian:0.3" and config["train"]["epochs"] == 2
    assert "noise" not in config["train"] and config["parts"]["loss"]["options"]["kl_warmup"] == 2
    # it trained at a constant rate, the only schedule there was: today's cosine default does not apply to it
    assert config["train"]["lr"] == 0.001 and config["train"]["lr_schedule"] == "constant"
    assert config["train"]["lr_warmup"] == 0
    resume_run(run, epochs=3, log=lambda _: None)  # and resumes again from the upgraded file
    assert read_json(run / "metrics.json")["test"]["noise"] == "gaussian:0.3"


def test_the_old_run_samples_through_the_cli(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(OLD / "ae-gmm"), "-n", "4", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_run_started_from_python_keeps_its_parts_on_resume_and_reload(image_folder, tmp_path):
    from genkit.run import start_run
    from genkit.train import TrainConfig

    options = {"latent": 2, "channels": 4, "hidden": 16, "loss.k": 2, "prior.components": 3}
    train = TrainConfig(epochs=1, batch_size=16, progress=False)
    parts = {"prior": "mog", "loss": "iwae"}
    run = start_run(
        "vae-conv", options, train, DataConfig(str(image_folder)), out=tmp_path / "r", parts=parts, log=lambda _: None
    )
    after_one = load_model(run).prior.means.clone()
    resume_run(run, epochs=2, log=lambda _: None)
    model = load_model(run)
    assert (model.prior.name, model.prior.config.components) == ("mog", 3)
    assert (model.loss_fn.name, model.loss_fn.config.k) == ("iwae", 2)
    assert not torch.equal(model.prior.means, after_one)  # the resumed epoch trained the prior too
    assert [r["epoch"] for r in read_json(run / "metrics.json")["epochs"]] == [1, 2]
    assert "train_iwae" in read_json(run / "metrics.json")["epochs"][1]


def test_a_format_2_gaussian_run_keeps_its_plain_sigmoid(tmp_path):
    # before format 3 the gaussian likelihood's mean was sigmoid(logits): such a run reloads with margin 0, so that
    # its weights give the images they were trained to give; other likelihoods' margins are left as recorded
    model = genkit.get_model("ae", latent=2, channels=4, hidden=16, **{"loss.likelihood": "gaussian"})
    assert model.loss_fn.config.margin == MARGIN
    run = save_run(model, tmp_path / "run")
    config = read_json(run / "config.json")
    assert config["format"] == FORMAT == 3
    assert load_model(run).loss_fn.config.margin == MARGIN  # today's file: as written
    (run / "config.json").write_text(json.dumps({**config, "format": 2}))
    old = load_model(run)
    assert old.loss_fn.config.margin == 0.0
    logits = old.decode_logits(torch.zeros(3, 2))
    assert torch.equal(old.decode(torch.zeros(3, 2)), torch.sigmoid(logits))
    config["parts"]["loss"]["options"]["likelihood"] = "logistic"
    (run / "config.json").write_text(json.dumps({**config, "format": 2}))
    assert load_model(run).loss_fn.config.margin == MARGIN
