"""Fuzzing with hypothesis: whatever the command line or a config holds, no traceback ever reaches the user.

The CLI must answer with exit code 0 (e.g. ``--help``) or 2 and at most one line on stderr, never 1 (an
internal error). Config loaders must return a valid config or raise :class:`genkit.ConfigError`; loading a
run's ``config.json`` must succeed or raise a :class:`genkit.GenkitError`.

Training never starts: every ``genkit run`` gets a dataset that does not exist, and run folders hold no
``checkpoint.pt`` to resume from. Integers that would build a slow, memory-hungry model are left out: sizes
stay small, or are far beyond any address space (so that building fails at once, on any machine).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import genkit
from genkit import ConfigError, GenkitError, PluginError
from genkit.checkpoint import load_model
from genkit.cli import main
from genkit.run import resume_run
from genkit.train import TrainConfig
from tests.fault_helpers import png_bomb, tiny_run, write_images


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _loadable(name: str) -> bool:
    try:
        genkit.get_model_class(name)
    except PluginError:  # a broken third-party plugin in this environment is tested elsewhere
        return False
    return True


MODELS = [name for name in genkit.list_models() if _loadable(name)]
NOISES = genkit.registry.noise.names()
#: integers far beyond any address space: a model built with one fails at once instead of filling the memory.
HUGE = [2**48, 2**63, 2**64, 10**30]


def harmless(value: str) -> bool:
    """False for integers large enough to build a slow, memory-hungry model yet small enough to be allocated."""
    try:
        number = int(value)
    except ValueError:
        return True
    return not 40 < abs(number) < 2**48


VALID = st.integers(1, 12).map(str)
#: mostly valid numbers (so that many commands get past parsing), then edge cases and garbage.
NUMBERS = st.one_of(
    VALID,
    VALID,
    st.integers(-3, 40).map(str),
    st.sampled_from(["0", "-1", "nan", "-nan", "inf", "-inf", "1e400", "2.5", "0x10", "", " ", "-", "--"]),
    st.sampled_from([str(n) for n in HUGE] + [str(-n) for n in HUGE]),
    st.text(max_size=6).filter(harmless),
)
NOISE_SPECS = st.one_of(
    st.sampled_from(["gaussian:0.5", "gaussian", ":0.5", "gaussian:0.5:1", "::", "", "salt-pepper:2", "masking:1"]),
    st.builds(lambda name, level: f"{name}:{level}", st.sampled_from([*NOISES, "gausian", "x"]), NUMBERS),
    st.builds(lambda name, level: f"{name}:{level:g}", st.sampled_from(NOISES), st.floats(0, 1)),
)
SETTINGS = st.builds(
    lambda key, value: f"{key}={value}",
    st.sampled_from(
        ["latent", "channels", "hidden", "image_size", "image-size", "image_channels", "beta", "bogus", ""]
    ),
    st.one_of(NUMBERS, st.sampled_from(["true", "null", "[1]", "{}", '"x"', "1e309", "-0"])),
)
DEVICES = st.sampled_from(["cpu", "auto", "meta", "cuda:x", "tpu", "", "cpu:0", "mps", "CPU"])


def _flags(*names: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from(names).map(lambda name: [name])


def _options(values: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    return st.one_of(*(value.map(lambda v, flag=flag: [flag, v]) for flag, value in values.items()))


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """Files the fuzzed commands point at: a finished tiny run, damaged runs, images and codes good and bad."""
    root = tmp_path_factory.mktemp("fuzz")
    images = write_images(root / "images", 24)
    run = tiny_run(root / "run", images)
    damaged = Path(shutil.copytree(run, root / "damaged"))
    (damaged / "model.safetensors").write_bytes(b"\0" * 10)
    (damaged / "checkpoint.pt").write_bytes(b"PK\3\4 not a zip")
    (root / "empty-run").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(root / "big.png")
    (root / "text.png").write_text("not an image")
    png_bomb(root / "bomb.png")
    np.savez(root / "codes.npz", codes=np.zeros((2, 2), dtype=np.float16))
    np.savez(root / "wide.npz", codes=np.zeros((2, 5), dtype=np.float16))
    return {
        "root": root,
        "run": run,
        "damaged": damaged,
        "empty-run": root / "empty-run",
        "gray": images / "0000.png",
        "rgb": root / "rgb.png",
        "big": root / "big.png",
        "text": root / "text.png",
        "bomb": root / "bomb.png",
        "codes": root / "codes.npz",
        "wide": root / "wide.npz",
        "missing": root / "missing",
    }


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Never download a dataset, never read a real data folder, never debug, write only under tmp_path."""

    def no_network(*args, **kwargs):
        raise RuntimeError("no network in the fuzz tests")

    for name in ("MNIST", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, name, no_network)
    monkeypatch.setenv("GENKIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GENKIT_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def answers_in_one_line(capfd, args: list[str]) -> int:
    """Run the CLI; it must exit with 0 or 2 and write no traceback and at most one line to stderr."""
    code = main(args)
    _, err = capfd.readouterr()
    assert "Traceback" not in err, (args, err)
    assert code in (0, 2), (args, code, err)
    lines = err.splitlines()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("genkit: error: "), (args, err)
    return code


def no_debug(args: list[str]) -> bool:
    return "--debug" not in args and "--nproc" not in args  # --nproc relaunches under torchrun


@fuzz(150)
@given(data=st.data())
def test_fuzz_run_never_shows_a_traceback(data, place, offline, capfd):
    names = st.sampled_from(MODELS)
    model = data.draw(st.one_of(names, names, st.sampled_from(["vae-cnov", "AE", "", "-x"]), st.text(max_size=10)))
    option = st.one_of(
        _options(
            {
                "--latent": NUMBERS,
                "--beta": NUMBERS,
                "--epochs": NUMBERS,
                "--batch-size": NUMBERS,
                "--lr": NUMBERS,
                "--seed": NUMBERS,
                "--kl-warmup": NUMBERS,
                "--lr-warmup": NUMBERS,
                "--limit": NUMBERS,
                "--noise": NOISE_SPECS,
                "--set": SETTINGS,
                "--device": DEVICES,
                "--resume": st.sampled_from([str(place[k]) for k in ("missing", "damaged", "empty-run")]),
            }
        ),
        _flags("--quiet", "--overwrite", "--help"),
    )
    garbage = st.text(max_size=8).filter(harmless).map(lambda token: [token])
    options = [token for pair in data.draw(st.lists(option | garbage | option, max_size=6)) for token in pair]
    out = offline / "out"
    args = ["run", model, *options, "--dataset", str(place["missing"]), "--out", str(out)]
    if no_debug(args):
        answers_in_one_line(capfd, args)
        assert not out.exists()


@fuzz(80)
@given(data=st.data())
def test_fuzz_other_commands_never_show_a_traceback(data, place, offline, capfd):
    paths = st.sampled_from(["run", "damaged", "empty-run", "missing", "gray"]).map(lambda k: str(place[k]))
    images = st.lists(
        st.sampled_from(["gray", "rgb", "big", "text", "bomb", "missing", "root"]).map(lambda k: str(place[k])),
        max_size=3,
    )
    seeds = st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.text(max_size=4))  # larger: xfail in bad_input
    outputs = st.sampled_from(["s.png", "s.jpg", "missing/s.png", "."]).map(lambda name: str(offline / name))
    counts = st.one_of(st.integers(-2, 8).map(str), st.sampled_from(["0", "1e3", "nan", "", "x"]))
    verb = data.draw(st.sampled_from(["sample", "encode", "decode", "denoise", "info", "list"]))
    if verb == "sample":
        extra = _options({"-n": counts, "--seed": seeds, "-o": outputs, "--prior": st.sampled_from(["normal", "x"])})
        args = [data.draw(paths)]
    elif verb == "encode":
        extra = _options({"-o": outputs})
        args = [data.draw(paths), *data.draw(images)]
    elif verb == "denoise":
        extra = _options({"-o": outputs, "--noise": NOISE_SPECS, "--seed": seeds})
        args = [data.draw(paths), *data.draw(images)]
    elif verb == "decode":
        codes = st.sampled_from(["codes", "wide", "text", "missing", "gray"]).map(lambda k: str(place[k]))
        extra = _options({"-o": outputs})
        args = [data.draw(paths), data.draw(codes)]
    elif verb == "info":
        extra = _flags("--help")
        args = [data.draw(st.one_of(st.sampled_from([*MODELS, "vae-cnov", "AE"]), st.text(max_size=8)))]
    else:
        extra = _options({"--kind": st.sampled_from(["models", "priors", "noise", "losses", "bogus", ""])})
        args = data.draw(st.lists(st.sampled_from(["*vae*", "[", "", "ae", "*"]), max_size=1))
    args += [token for pair in data.draw(st.lists(extra, max_size=3)) for token in pair]
    if no_debug(args):
        answers_in_one_line(capfd, [verb, *args])


# -- config loaders --------------------------------------------------------------------------------------------

INTEGERS = st.one_of(st.integers(-3, 40), st.sampled_from(HUGE + [-n for n in HUGE]))
SCALARS = st.one_of(st.none(), st.booleans(), INTEGERS, st.floats(), st.text(max_size=8))
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
)


#: every options class: the models' shared sizes and each registered part's options
CONFIGS = {"model": genkit.ModelConfig} | {
    f"{kind} {name}": genkit.registry.PARTS[kind].load(name).config_class
    for kind in genkit.registry.PARTS
    for name in genkit.registry.PARTS[kind].names()
    if dataclasses.fields(genkit.registry.PARTS[kind].load(name).config_class)  # normal has no options
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@fuzz(50)
@given(data=st.data())
def test_fuzz_config_from_dict(name, data):
    cls = CONFIGS[name]
    keys = st.one_of(st.sampled_from([f.name for f in dataclasses.fields(cls)]), st.text(max_size=5), st.integers())
    given_data = data.draw(st.one_of(st.dictionaries(keys, JSON, max_size=5), JSON))
    try:
        config = cls.from_dict(given_data)
    except ConfigError:
        return
    assert isinstance(config, cls)
    assert cls.from_dict(config.to_dict()) == config  # a returned config is valid: it survives a round trip
    for field, kind, _, _ in cls.describe_fields():
        value = getattr(config, field)
        assert kind not in ("int", "float") or (not isinstance(value, bool) and math.isfinite(value)), field


TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
TRAIN_VALUES = st.one_of(JSON, NOISE_SPECS, DEVICES)


@fuzz(100)
@given(data=st.dictionaries(st.one_of(st.sampled_from(TRAIN_FIELDS), st.text(max_size=5)), TRAIN_VALUES, max_size=6))
def test_fuzz_train_config_from_dict(data):
    try:
        config = TrainConfig.from_dict(data)
    except ConfigError:
        return
    assert isinstance(config, TrainConfig)
    TrainConfig.from_dict(config.to_dict())


def test_train_config_from_a_non_object_is_a_config_error():
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]


def _mutations(config: dict) -> st.SearchStrategy[dict]:
    """``config`` with one or two fields (top level or one level down) deleted or replaced by other values."""
    paths = [(key,) for key in config] + [
        (key, sub) for key, value in config.items() if isinstance(value, dict) for sub in value
    ]
    values = st.one_of(JSON, NOISE_SPECS, DEVICES, st.sampled_from(["ae", "vae-conv", "normal", "x", "mnist", "", "."]))

    def mutate(changes: list[tuple[tuple[str, ...], object]]) -> dict:
        result = json.loads(json.dumps(config))
        for path, value in changes:
            parent = result
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            if value is _DELETE:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        return result

    change = st.tuples(st.sampled_from(paths), st.one_of(st.just(_DELETE), values))
    mutated = st.lists(change, min_size=1, max_size=2).map(mutate)
    return st.one_of(mutated, mutated, mutated, JSON)


_DELETE = object()


@fuzz(60)
@given(data=st.data())
def test_fuzz_run_config_json_loads_or_fails_cleanly(data, place, offline, capfd):
    folder = offline / "run"
    folder.mkdir(exist_ok=True)
    shutil.copy(place["run"] / "model.safetensors", folder / "model.safetensors")  # and no checkpoint.pt
    original = json.loads((place["run"] / "config.json").read_text())
    config = data.draw(_mutations(original))
    (folder / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_model(folder), lambda: resume_run(folder, log=lambda _: None)):
        try:
            load()
        except GenkitError:
            pass
    answers_in_one_line(capfd, ["sample", str(folder), "-n", "2", "-o", str(offline / "s.png")])
    assert answers_in_one_line(capfd, ["run", "--resume", str(folder), "--quiet"]) == 2  # nothing to resume
