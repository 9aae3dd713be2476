"""A loss with an adversary: the trainer steps a second optimizer (the aae's discriminator) beside the model's."""

import json
import math

import pytest
import torch

import genkit
from genkit.cli import main
from genkit.data import ImageData
from genkit.train import TrainConfig, Trainer

SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16", "--quiet"]


def aae_trainer(epochs: int = 3) -> Trainer:
    torch.manual_seed(0)
    model = genkit.get_model("aae", latent=2, channels=4, hidden=16, **{"loss.hidden": 32})
    return Trainer(model, TrainConfig(epochs=epochs, batch_size=16, progress=False, device="cpu", lr=2e-3))


def test_the_discriminator_has_its_own_optimizer_and_learns(tiny_images):
    trainer = aae_trainer()
    discriminator = trainer.model.loss_fn.discriminator
    theirs = {id(p) for p in discriminator.parameters()}
    mine = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not theirs & mine and mine == {id(p) for p in trainer.model.parameters()} - theirs
    assert {id(p) for g in trainer.adversary_optimizer.param_groups for p in g["params"]} == theirs
    before = [p.detach().clone() for p in discriminator.parameters()]
    history = trainer.fit(ImageData(tiny_images, torch.zeros(64, dtype=torch.long)))
    assert all(not torch.equal(b, p) for b, p in zip(before, discriminator.parameters(), strict=True))
    record = history[-1]
    # the adversary's term is logged apart and is not part of the model's loss
    assert record["train_loss"] == pytest.approx(record["train_reconstruction"] + record["train_adversarial"])
    # it tells the untrained codes from prior draws better than chance (log 4 for two guesses at 1/2)
    assert record["train_adversary_discriminator"] < math.log(4)


def test_resuming_restores_the_adversary_optimizer(tiny_images):
    trainer = aae_trainer(epochs=1)
    trainer.fit(ImageData(tiny_images, torch.zeros(64, dtype=torch.long)))
    state = trainer.state_dict()
    assert state["adversary_optimizer"]["state"]  # Adam's moments of the discriminator
    fresh = aae_trainer(epochs=2)
    fresh.load_state_dict(state)
    first = next(iter(fresh.adversary_optimizer.state.values()))["exp_avg"]
    torch.testing.assert_close(first, next(iter(trainer.adversary_optimizer.state.values()))["exp_avg"])
    state.pop("adversary_optimizer")
    with pytest.raises(ValueError, match="no adversary optimizer"):
        aae_trainer().load_state_dict(state)


def test_genkit_run_trains_and_resumes_an_aae(image_folder, tmp_path, capsys):
    run = tmp_path / "aae"
    assert main(["run", "aae", "--latent", "2", *SMALL, "--dataset", str(image_folder), "--out", str(run)]) == 0
    assert main(["run", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all("train_adversary_discriminator" in e for e in epochs)
