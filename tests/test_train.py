import itertools
import json
import math
import platform
from pathlib import Path

import pytest
import torch

import genkit
from genkit.checkpoint import load_checkpoint, load_model, load_weights, save_weights
from genkit.config import DataConfig
from genkit.data import ImageData, load_dataset
from genkit.run import resume_run, start_run
from genkit.train import TrainConfig, Trainer, device_name
from tests.conftest import write_distribution

QUIET = {"progress": False}
#: the rate a run extended by --resume needs to match one planned that long (the default decays over the plan)
CONSTANT_RATE = {"lr_schedule": "constant", "lr_warmup": 0}


def data_of(images):
    return ImageData(images, torch.zeros(len(images), dtype=torch.long))


def test_loss_falls_on_generated_tensors(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=4, channels=8, hidden=32)
    trainer = Trainer(model, TrainConfig(epochs=8, batch_size=16, lr=3e-3, **QUIET))
    history = trainer.fit(data_of(tiny_images), data_of(tiny_images[:16]))
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert history[-1]["test_mse"] < history[0]["test_mse"]
    assert set(history[0]) >= {"train_reconstruction", "train_kl", "test_loss", "test_mse", "images_per_second"}


def test_loss_falls_on_real_mnist(data_dir):
    train, test = load_dataset("mnist", data_dir)
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=10, channels=16)
    # a constant rate: the default 1-epoch warm-up and cosine decay would take up the whole of a 2-epoch run
    config = TrainConfig(epochs=2, batch_size=32, lr=2e-3, **CONSTANT_RATE, **QUIET)
    history = Trainer(model, config).fit(train.subset(5000), test.subset(500))
    assert history[1]["test_loss"] < history[0]["test_loss"]
    # predicting the mean image gives a test MSE of about 0.067; a learning model goes well below
    assert history[1]["test_mse"] < 0.05


def test_training_is_deterministic_on_cpu(tiny_images):
    def train_once():
        torch.manual_seed(3)
        model = genkit.get_model("vae-conv", latent=3, channels=4, hidden=16)
        noise = genkit.get_noise("gaussian:0.2")
        Trainer(model, TrainConfig(epochs=2, batch_size=16, seed=3, **QUIET), noise=noise).fit(data_of(tiny_images))
        return model.state_dict()

    a, b = train_once(), train_once()
    assert all(torch.equal(a[k], b[k]) for k in a)


def learning_rates_seen(trainer: Trainer, data) -> list[float]:
    """Fit ``trainer`` on ``data`` and return the learning rate of every optimizer step."""
    seen = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    trainer.fit(data)
    return seen


def test_cosine_schedule_decays_the_learning_rate_step_by_step(tiny_images):
    model = genkit.get_model("ae", latent=3, channels=4, hidden=16)
    trainer = Trainer(model, TrainConfig(epochs=4, batch_size=16, lr=0.01, lr_warmup=0, **QUIET))  # cosine: the default
    assert [round(trainer.learning_rate(p), 6) for p in (0, 1, 2, 4, 5)] == [0.01, 0.008536, 0.005, 0, 0]
    seen = learning_rates_seen(trainer, data_of(tiny_images))
    assert len(seen) == 4 * 4 and seen[0] == 0.01  # 64 images in batches of 16, 4 epochs
    assert all(a > b for a, b in itertools.pairwise(seen)) and seen[-1] == pytest.approx(0.01 * (1 - 0.9904), abs=1e-5)
    constant = Trainer(model, TrainConfig(lr=0.01, **CONSTANT_RATE, **QUIET))
    assert constant.learning_rate(0) == constant.learning_rate(7) == 0.01
    with pytest.raises(genkit.ConfigError, match="lr_schedule must be one of constant, cosine, got 'linear'"):
        TrainConfig(lr_schedule="linear")


def test_lr_warmup_ramps_up_before_the_schedule(tiny_images):
    model = genkit.get_model("ae", latent=3, channels=4, hidden=16)
    cosine = TrainConfig(epochs=4, batch_size=16, lr=0.01, lr_schedule="cosine", lr_warmup=2, **QUIET)
    trainer = Trainer(model, cosine)
    assert [round(trainer.learning_rate(p), 6) for p in (0, 1, 2, 3, 4)] == [0, 0.004268, 0.005, 0.001464, 0]
    config = TrainConfig(epochs=4, batch_size=16, lr=0.01, lr_schedule="constant", lr_warmup=2, **QUIET)
    constant = Trainer(model, config)
    seen = learning_rates_seen(constant, data_of(tiny_images))
    # 4 steps an epoch: up in equal steps over the first 2 epochs (the first step not of size 0), then flat
    assert seen == pytest.approx([0.01 * (i + 1) / 8 for i in range(8)] + [0.01] * 8)
    assert trainer.learning_rate(0, 0.25) == pytest.approx(0.01 * 0.125 * 0.5 * (1 + math.cos(0)))
    with pytest.raises(genkit.ConfigError, match="lr_warmup must be a non-negative integer, got -1"):
        TrainConfig(lr_warmup=-1)


def test_kl_warmup_reaches_the_loss_as_training_progress(tiny_images):
    model = genkit.get_model("vae-conv", latent=3, channels=4, hidden=16, **{"loss.kl_warmup": 2})
    seen = []
    original = model.loss

    def spy(x, target=None, **kw):
        seen.append(kw["progress"])
        return original(x, target, **kw)

    model.loss = spy
    Trainer(model, TrainConfig(epochs=2, batch_size=16, **QUIET)).fit(data_of(tiny_images))
    assert seen == pytest.approx([e + s / 4 for e in range(2) for s in range(4)])  # 4 steps an epoch


def test_denoising_training_uses_noisy_inputs_and_clean_targets(tiny_images):
    seen = {}
    model = genkit.get_model("ae", latent=4, channels=4, hidden=16)
    original = model.loss

    def spy(x, target=None, **kw):
        seen["x"], seen["target"] = x, target
        return original(x, target, **kw)

    model.loss = spy
    noise = genkit.get_noise("masking:0.5")
    Trainer(model, TrainConfig(epochs=1, batch_size=64, **QUIET), noise=noise).fit(data_of(tiny_images))
    assert (seen["x"] == 0).float().mean() > 0.4
    assert seen["target"].min() >= 0 and not torch.equal(seen["x"], seen["target"])


def test_resume_gives_the_same_result_as_an_uninterrupted_run(image_folder, tmp_path):
    # a run stopped early and extended matches one planned that long only at a constant rate (see the next test)
    options = {"latent": 3, "channels": 4, "hidden": 16}
    full = start_run(
        "vae-conv",
        options,
        TrainConfig(epochs=3, batch_size=16, **CONSTANT_RATE, **QUIET),
        DataConfig(str(image_folder)),
        out=tmp_path / "full",
        log=lambda _: None,
    )
    part = start_run(
        "vae-conv",
        options,
        TrainConfig(epochs=1, batch_size=16, **CONSTANT_RATE, **QUIET),
        DataConfig(str(image_folder)),
        out=tmp_path / "part",
        log=lambda _: None,
    )
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1
    resume_run(part, epochs=3, log=lambda _: None)
    a, b = load_model(full).state_dict(), load_model(part).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    history = json.loads((part / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_extending_a_cosine_run_says_that_its_learning_rate_rises_again(image_folder, tmp_path):
    options = {"latent": 3, "channels": 4, "hidden": 16}
    config = TrainConfig(epochs=1, batch_size=32, **QUIET)
    run = start_run("ae", options, config, DataConfig(str(image_folder)), out=tmp_path / "r", log=lambda _: None)
    said = []
    resume_run(run, epochs=2, log=said.append)
    # the default lr 0.002 halfway through the cosine decay of the 2 epochs it now spans (the warm-up is over)
    assert said[0] == (
        f"resuming {run} after epoch 1 of 2; the cosine decay now spans 2 epochs, so the learning rate starts again "
        "at 0.001"
    )


NAN_PLUGIN = """
    import torch
    from conv_base import ConvVAE

    class NaNAfterEpoch(ConvVAE):
        '''A VAE whose loss turns NaN at epoch 2, step 3 (for testing).'''

        calls = 0

        def loss(self, x, target=None, **kw):
            out = super().loss(x, target, **kw)
            if not self.training:
                return out
            type(self).calls += 1
            if type(self).calls == 4 + 3:  # 4 steps per epoch: 58 training images in batches of 16
                out.terms["reconstruction"] = out.terms["reconstruction"] * float("nan")
            return out
"""


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(plugin_site, image_folder, tmp_path):
    write_distribution(
        plugin_site, "nan-pkg", {"genkit.models": {"nan-vae": "fake_nan:NaNAfterEpoch"}}, {"fake_nan": NAN_PLUGIN}
    )
    out = tmp_path / "run"
    config = TrainConfig(epochs=3, batch_size=16, **QUIET)
    options = {"latent": 3, "channels": 4, "hidden": 16}
    with pytest.raises(
        genkit.TrainingError, match=r"loss became nan at epoch 2, step 3.*checkpoint of epoch 1 is kept"
    ):
        start_run("nan-vae", options, config, DataConfig(str(image_folder)), out=out, log=lambda _: None)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    model = load_model(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "stopped" in json.loads((out / "metrics.json").read_text())


def test_run_refuses_existing_folder(image_folder, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    data = DataConfig(str(image_folder))
    with pytest.raises(genkit.RunExistsError, match="--overwrite"):
        start_run("ae", {"channels": 4}, TrainConfig(epochs=1, **QUIET), data, out=out, log=lambda _: None)
    start_run("ae", {"channels": 4}, TrainConfig(epochs=1, **QUIET), data, out=out, overwrite=True, log=lambda _: None)
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "model.safetensors").is_file()


def test_image_folder_dataset(image_folder):
    train, test = load_dataset(str(image_folder), image_size=16, channels=3)
    assert train.images.shape[1:] == (3, 16, 16) and len(train) + len(test) == 64
    assert train.classes == ["left", "right"] and set(train.labels.tolist()) == {0, 1}
    empty = image_folder.parent / "empty"
    empty.mkdir()
    with pytest.raises(genkit.DataError, match="no images"):
        load_dataset(str(empty))


def test_missing_dataset_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(genkit.DataError, match=r"could not be downloaded.*put train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_bf16_autocast_on_the_cpu_is_opt_in(tiny_images):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=4, channels=8, hidden=32)
    trainer = Trainer(model, TrainConfig(epochs=4, batch_size=16, lr=3e-3, amp=True, **QUIET))
    with trainer.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    history = trainer.fit(data_of(tiny_images))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    default = Trainer(genkit.get_model("ae"), TrainConfig(**QUIET))
    with default.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(genkit.ConfigError, match="amp must be"):
        TrainConfig(amp="yes")


def test_channels_last_is_opt_in_and_changes_neither_outputs_nor_saved_weights(tiny_images, tmp_path):
    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=4, channels=8, hidden=32)
    reference = genkit.get_model("vae-conv", latent=4, channels=8, hidden=32)
    reference.load_state_dict(model.state_dict())
    conv = model.encoder.body[2].weight  # 8 input channels; with 1, the two layouts are the same memory
    Trainer(model, TrainConfig(**QUIET))
    assert conv.is_contiguous()  # a user's module keeps its layout unless asked
    Trainer(model, TrainConfig(channels_last=True, **QUIET))
    conv = model.encoder.body[2].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = tiny_images[:8]
    assert torch.allclose(model.reconstruct(x), reference.reconstruct(x), atol=1e-5)
    save_weights(model, tmp_path / "model.safetensors")
    fresh = genkit.get_model("vae-conv", latent=4, channels=8, hidden=32)
    load_weights(fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh.reconstruct(x), reference.reconstruct(x))


def test_a_net_that_views_after_a_convolution_trains(tiny_images):
    class ViewEncoder(genkit.Encoder):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, 2, 1)
            self.head = torch.nn.Linear(4 * 14 * 14, 6)

        def forward(self, x):
            mean, logvar = self.head(self.conv(x).view(x.shape[0], -1)).chunk(2, dim=1)
            return genkit.Posterior(mean, logvar)

    model = genkit.get_model("vae-conv", latent=3, channels=4, hidden=16)
    model.encoder = ViewEncoder()
    history = Trainer(model, TrainConfig(epochs=1, batch_size=16, **QUIET)).fit(data_of(tiny_images))
    assert math.isfinite(history[-1]["train_loss"])


def test_streamed_folder_trains_and_resumes_like_an_uninterrupted_run(image_folder, tmp_path):
    from genkit.data import ImageFolderStream

    train, test = load_dataset(str(image_folder), stream=True)
    assert isinstance(train, ImageFolderStream) and len(train) + len(test) == 64
    in_memory, _ = load_dataset(str(image_folder))
    torch.testing.assert_close(train.head(len(train)), in_memory.images)  # same split, same pixels

    options = {"latent": 3, "channels": 4, "hidden": 16}
    config = TrainConfig(epochs=4, batch_size=16, lr=3e-3, workers=0, **CONSTANT_RATE, **QUIET)
    full = start_run(
        "vae-conv", options, config, DataConfig(str(image_folder), stream=True), out=tmp_path / "full", log=print
    )
    history = json.loads((full / "metrics.json").read_text())["epochs"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    short = TrainConfig(epochs=2, batch_size=16, lr=3e-3, workers=0, **CONSTANT_RATE, **QUIET)
    part = start_run(
        "vae-conv", options, short, DataConfig(str(image_folder), stream=True), out=tmp_path / "part", log=print
    )
    assert json.loads((part / "config.json").read_text())["data"]["stream"] is True
    resume_run(part, epochs=4, log=lambda _: None)
    a, b = load_model(full).state_dict(), load_model(part).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_distributed_sampler_gives_each_process_a_disjoint_shard(image_folder):
    from genkit.train import epoch_sampler

    train, _ = load_dataset(str(image_folder), stream=True)
    shards = [list(epoch_sampler(train, 2, rank, 0, 0, torch.Generator())) for rank in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(len(train)))
    later = list(epoch_sampler(train, 2, 0, 0, 1, torch.Generator()))
    assert later != shards[0], "each epoch reshuffles"


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_images):
    """TrainConfig(compile=True) wraps the loss in torch.compile: the same steps give the same weights."""
    pytest.importorskip("torch._inductor")

    def train(compile_: bool):
        torch.manual_seed(5)
        model = genkit.get_model("ae", latent=3, channels=4, hidden=16)
        history = Trainer(model, TrainConfig(epochs=2, batch_size=32, compile=compile_, **QUIET)).fit(
            data_of(tiny_images)
        )
        return model.state_dict(), history

    (eager, eager_history), (compiled, compiled_history) = train(False), train(True)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)
    assert compiled_history[-1]["train_loss"] == pytest.approx(eager_history[-1]["train_loss"], rel=1e-4)


def test_device_name_of_a_cpu_names_its_model_not_only_the_architecture():
    name = device_name(torch.device("cpu"))
    assert platform.machine() in name
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []  # fmt: skip
    if models:
        assert name == f"{models[0]} ({platform.machine()})"


def test_per_step_callbacks_see_every_step_with_its_terms_and_lr(tiny_images):
    from genkit.train import Callback, Step

    class Steps(Callback):
        def __init__(self) -> None:
            self.seen: list[Step] = []

        def on_step_end(self, trainer: Trainer, step: Step) -> None:
            self.seen.append(step)

    torch.manual_seed(0)
    model = genkit.get_model("vae-conv", latent=2, channels=4, hidden=16)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, lr_schedule="cosine", lr_warmup=0, progress=False)
    steps = Steps()
    Trainer(model, config, callbacks=[steps]).fit(ImageData(tiny_images, torch.zeros(64, dtype=torch.long)))
    assert [s.global_step for s in steps.seen] == list(range(1, 9))  # 64 images / 16 per batch, two epochs
    assert [s.epoch for s in steps.seen] == [1] * 4 + [2] * 4
    assert [s.progress for s in steps.seen] == [i / 4 for i in range(8)]
    assert steps.seen[0].lr == pytest.approx(1e-3) and steps.seen[-1].lr < steps.seen[0].lr  # cosine decay
    assert all(s.images == 16 and set(s.terms) == {"reconstruction", "kl"} for s in steps.seen)
    assert not any(t.requires_grad for s in steps.seen for t in s.terms.values())


def test_the_progress_bar_shows_on_a_terminal_only_unless_asked(tiny_images, capsys):
    model = genkit.get_model("ae", latent=3, channels=4, hidden=16)
    Trainer(model, TrainConfig(epochs=1, batch_size=16)).fit(data_of(tiny_images))  # default: stderr is no terminal
    assert "epoch 1/1" not in capsys.readouterr().err
    Trainer(model, TrainConfig(epochs=1, batch_size=16, progress=True)).fit(data_of(tiny_images))
    assert "epoch 1/1" in capsys.readouterr().err
    Trainer(model, TrainConfig(epochs=1, batch_size=16, progress=False)).fit(data_of(tiny_images))
    assert "epoch 1/1" not in capsys.readouterr().err
