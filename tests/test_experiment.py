"""genkit run --config: experiment files (TOML, JSON, YAML) and a finished run's config.json, under the command line."""

import json
from pathlib import Path

import pytest

from genkit.cli import main
from tests.conftest import ROOT

EXAMPLE = ROOT / "docs" / "examples" / "vamp-iwae.toml"
SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16", "--quiet"]


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_the_example_file_runs_and_the_command_line_overrides_it(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", "--config", str(EXAMPLE), *SMALL, "--set", "prior.components=3", "--lr", "5e-3"]
    assert main([*args, "--dataset", str(image_folder), "--out", str(run)]) == 0, capsys.readouterr().err
    config = _config(run)
    assert config["model"] == "vae-conv" and config["model_config"]["latent"] == 16  # from the file
    assert config["parts"]["loss"] == {"name": "iwae", "options": {**config["parts"]["loss"]["options"], "k": 5}}
    assert config["parts"]["prior"]["name"] == "vamp"
    assert config["parts"]["prior"]["options"]["components"] == 3  # the command line wins
    assert config["parts"]["encoder"]["options"]["channels"] == 4
    assert config["train"]["lr"] == 5e-3 and config["train"]["lr_schedule"] == "cosine"  # one of each
    assert config["train"]["epochs"] == 1 and config["data"]["dataset"] == str(image_folder)


def test_a_finished_runs_config_json_repeats_it(image_folder, tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["run", "iwae", *SMALL, "--set", "loss.k=3", "--dataset", str(image_folder), "--out", str(first)]) == 0
    assert main(["run", "--config", str(first / "config.json"), "--out", str(again), "--quiet"]) == 0
    a, b = _config(first), _config(again)
    assert {k: a[k] for k in ("model", "model_config", "parts", "train", "data")} == {
        k: b[k] for k in ("model", "model_config", "parts", "train", "data")
    }
    # a run from before the lr schedule options trained at a constant rate: it is repeated so, not at today's default
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**a, "train": {k: v for k, v in a["train"].items() if not k.startswith("lr_")}}))
    assert main(["run", "--config", str(older), "--out", str(tmp_path / "older"), "--quiet"]) == 0
    assert {k: _config(tmp_path / "older")["train"][k] for k in ("lr_schedule", "lr_warmup")} == {
        "lr_schedule": "constant",
        "lr_warmup": 0,
    }


def test_a_part_swapped_on_the_command_line_takes_its_own_defaults(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", "--config", str(EXAMPLE), *SMALL, "--loss", "elbo", "--prior", "normal"]
    assert main([*args, "--dataset", str(image_folder), "--out", str(run)]) == 0, capsys.readouterr().err
    assert _config(run)["parts"]["loss"]["name"] == "elbo" and "k" not in _config(run)["parts"]["loss"]["options"]


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("bad.toml", 'model = "ae"\nepochs = 3\n', "unknown key(s) epochs (known: model, model_config, parts"),
        ("types.toml", 'model = "ae"\n[train]\nepochs = "ten"\n', "[train]: epochs must be an integer, got 'ten'"),
        ("keys.toml", 'model = "ae"\n[train]\nepoch = 3\n', "unknown option(s) for"),
        ("data.toml", 'model = "ae"\n[data]\nset = "x"\n', "[data]: set (known: data_dir, dataset, limit"),
        ("limit.toml", 'model = "ae"\n[data]\nlimit = 0\n', "[data]: limit must be positive, got 0"),
        ("plot.toml", 'model = "ae"\n[logging]\nlatent_plot = "umap"\n', "latent_plot must be one of tsne, pca"),
        ("nomodel.toml", "[train]\nepochs = 3\n", 'must name the model: model = "NAME"'),
        ("broken.toml", 'model = "ae\n', "is not valid TOML"),
        ("list.json", "[1, 2]", "must hold a table of settings, found list"),
        ("parts.toml", 'model = "ae"\n[parts]\nencoder = "mlp"\n', "parts.encoder must hold a name"),
        ("noname.toml", 'model = "ae"\n[parts.loss]\noptions = { k = 3 }\n', "parts.loss must hold a name"),
        ("exp.ini", "model = ae", "give a .toml, .json or .yaml file"),
        ("unknown.toml", 'model = "nope"\n', "unknown models plugin 'nope'"),
        ("option.toml", 'model = "ae"\n[model_config]\nlatnt = 3\n', "unknown option 'latnt' for model ae"),
    ],
)
def test_a_bad_experiment_file_is_one_line_and_writes_nothing(tmp_path, capsys, name, text, says):
    (tmp_path / name).write_text(text)
    code = main(["run", "--config", str(tmp_path / name), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "run").exists()


def test_yaml_files_are_read_too(image_folder, tmp_path, capsys):
    pytest.importorskip("yaml")
    (tmp_path / "exp.yaml").write_text("model: ae\nmodel_config:\n  latent: 3\ntrain:\n  seed: 7\n")
    run = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "exp.yaml"), *SMALL, "--dataset", str(image_folder),
                 "--out", str(run)]) == 0  # fmt: skip
    assert _config(run)["model_config"]["latent"] == 3 and _config(run)["train"]["seed"] == 7


def test_config_is_refused_with_resume(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--config", str(EXAMPLE)]) == 2
    assert "--config" in capsys.readouterr().err
