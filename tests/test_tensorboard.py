"""genkit run --tensorboard: the event files hold the loss scalars, the learning rate, image grids and hparams."""

from pathlib import Path

import pytest

from genkit.cli import main

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'genkit[tensorboard]')")

ARGS = ["--set", "channels=4", "--set", "hidden=16", "--batch-size", "8", "--quiet"]


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulators = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    values: dict[str, list[tuple[int, float]]] = {}
    for accumulator in _events(folder):
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return values


def test_a_run_writes_scalars_images_and_hparams_and_resume_continues_them(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "vae-conv", *ARGS, "--epochs", "2", "--tensorboard", "--dataset", str(image_folder),
                 "--out", str(run)]) == 0  # fmt: skip
    logs = run / "tensorboard"
    scalars = _scalars(logs)
    assert [step for step, _ in scalars["epoch/train_loss"]] == [1, 2]
    assert [step for step, _ in scalars["epoch/test_mse"]] == [1, 2]
    assert scalars["step/reconstruction"]
    rates = [rate for _, rate in scalars["step/lr"]]  # the default 1-epoch warm-up's first step: lr / 8 steps
    assert rates[0] == pytest.approx(2e-3 / 8) and all(rates[0] < rate <= 2e-3 for rate in rates[1:])
    assert [step for step, _ in scalars["step/kl"]][:2] == [1, 10]
    images = {tag: len(a.Images(tag)) for a in _events(logs) for tag in a.Tags()["images"]}
    assert images == {"samples": 2, "reconstructions": 2}
    first = next(a for a in _events(logs) if a.Tags()["images"]).Images("samples")[0]
    assert first.width > 8 * 28 and first.encoded_image_string.startswith(b"\x89PNG")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    contents = []
    for accumulator in _events(logs):
        try:
            contents.append(accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        except KeyError:  # a file without hparams
            pass
    start = contents[0]
    hparams = HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["model"].string_value == "vae-conv" and hparams["train.batch_size"].number_value == 8
    assert hparams["model_config.latent"].number_value == 10 and hparams["parts.prior.name"].string_value == "normal"
    assert "final/test_mse" in scalars

    assert main(["run", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0  # recorded: it keeps logging
    assert [step for step, _ in _scalars(logs)["epoch/train_loss"]] == [1, 2, 3]


def test_without_the_package_the_flag_says_how_to_install_it(image_folder, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    run = tmp_path / "run"
    code = main(
        ["run", "ae", *ARGS, "--epochs", "1", "--tensorboard", "--dataset", str(image_folder), "--out", str(run)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err == (
        "genkit: error: --tensorboard needs the tensorboard package: pip install 'genkit[tensorboard]'\n"
    )
    assert not run.exists()
