"""Reliability, second pass: plugins that exit or hang at import, unwritable HOME, outputs never half-written."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

import genkit
from genkit.checkpoint import save_run
from genkit.cli import main
from tests.conftest import write_distribution

HOSTILE = {
    "exits": ("exit-pkg", "import sys\nsys.exit(0)\n"),
    "os-exits": ("osexit-pkg", "import os\nos._exit(0)\n"),
    "generator-exit": ("genexit-pkg", "raise GeneratorExit\n"),
    "system-exit": ("sysexit-pkg", "raise SystemExit('bye')\n"),
    "sleeps": ("sleep-pkg", "import time\ntime.sleep(600)\n"),
}


def _genkit(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    command = [sys.executable, "-m", "genkit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=120, check=False)


def test_plugins_that_exit_or_hang_at_import_are_flagged_and_the_rest_listed(tmp_path):
    site = tmp_path / "site"
    for name, (dist, source) in HOSTILE.items():
        module = f"fake_{name.replace('-', '_')}"
        write_distribution(site, dist, {"genkit.models": {name: f"{module}:Model"}}, {module: source})
    write_distribution(site, "odd-doc-pkg", {"genkit.models": {"odd-doc": "fake_doc:Odd"}},
                       {"fake_doc": "import genkit\nclass Odd(genkit.Model):\n    __doc__ = 42\n"})  # fmt: skip
    write_distribution(site, "path-pkg", {"genkit.models": {"../evil": "fake_doc:Odd"}}, {})
    nameless = write_distribution(site, "nameless", {"genkit.priors": {"nameless": "fake_doc:Odd"}}, {})
    (nameless / "nameless-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nVersion: 0.1\n")
    started = time.perf_counter()
    result = _genkit(["list"], site, GENKIT_PLUGIN_IMPORT_TIMEOUT="10")
    assert time.perf_counter() - started < 60  # the sleeping plugin waits 600 s; it is flagged after 10
    assert result.returncode == 0 and result.stderr == ""
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "exit-pkg[exits]: failed to load fake_exits:Model: SystemExit: 0" in lines["exits"]
    assert "osexit-pkg[os-exits]: failed to load fake_os_exits:Model: ExitCalled: os._exit(0)" in lines["os-exits"]
    assert (
        "BROKEN  sysexit-pkg[system-exit]: failed to load fake_system_exit:Model: SystemExit: bye"
        in lines["system-exit"]
    )
    assert "BROKEN  genexit-pkg[generator-exit]: failed to load" in lines["generator-exit"]
    assert "BROKEN  sleep-pkg[sleeps]: importing fake_sleeps:Model did not finish in time" in lines["sleeps"]
    assert "BROKEN  path-pkg[../evil]: '../evil' is not a valid plugin name" in lines["../evil"]
    assert lines["odd-doc"].startswith("odd-doc") and "[odd-doc-pkg]" in lines["odd-doc"]
    for builtin in ("ae", "vae-conv", "iwae", "wae", "vamp-vae"):
        assert "BROKEN" not in lines[builtin]
    priors = _genkit(["list", "--kind", "priors"], site)
    assert priors.returncode == 0 and "unknown[nameless]" in priors.stdout  # a distribution without a Name


def test_a_plugin_name_with_a_path_never_names_a_run_folder(tmp_path, plugin_site, capsys, monkeypatch):
    write_distribution(plugin_site, "path-pkg", {"genkit.models": {"../evil": "conv_base:ConvVAE"}}, {})
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["run", "../evil", "--limit", "8", "--epochs", "1"]) == 2
    assert "'../evil' is not a valid plugin name" in capsys.readouterr().err
    assert not list(work.iterdir()) and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["deeper"]


def test_an_unwritable_home_gives_no_matplotlib_warning(tmp_path):
    env = {"HOME": str(tmp_path / "no" / "such" / "home"), "XDG_CONFIG_HOME": "", "MPLCONFIGDIR": ""}
    result = _genkit(["list", "ae"], tmp_path, **env)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("ae ")


@pytest.fixture
def saved_run(tmp_path):
    torch.manual_seed(0)
    return save_run(genkit.get_model("vae-conv", latent=2, channels=4, hidden=16), tmp_path / "run")


def _disk_full_after_some_bytes(*args, **kwargs):
    target = args[1] if len(args) > 1 else kwargs.get("fp")
    Path(target).write_bytes(b"\x89PNG half")
    raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_the_existing_output_whole(saved_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    assert main(["sample", str(saved_run), "-n", "4", "-o", str(out)]) == 0
    good = out.read_bytes()
    monkeypatch.setattr("genkit.report.save_image", _disk_full_after_some_bytes)
    assert main(["sample", str(saved_run), "-n", "4", "-o", str(out), "--seed", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["grid.png"]


def test_a_failed_codes_write_leaves_the_existing_file_whole(saved_run, tmp_path, capsys, monkeypatch):
    image = tmp_path / "x.png"
    save_image(torch.rand(1, 28, 28), image)
    codes = tmp_path / "codes.npz"
    assert main(["encode", str(saved_run), str(image), "-o", str(codes)]) == 0
    good = codes.read_bytes()

    def full(file, **arrays):
        file.write(b"PK half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("numpy.savez", full)
    assert main(["encode", str(saved_run), str(image), "-o", str(codes)]) == 2
    assert codes.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))


def test_two_inputs_with_one_name_are_refused_not_overwritten(saved_run, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save_image(torch.rand(1, 28, 28), tmp_path / folder / "x.png")
    out = tmp_path / "denoised"
    code = main(
        ["denoise", str(saved_run), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "-o", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "would both be written to" in err and "x-denoised.png" in err
    assert not out.exists()


@pytest.fixture
def small_run(image_folder, tmp_path):
    run = tmp_path / "small"
    args = ["run", "ae", "--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--quiet", "--dataset", str(image_folder), "--out", str(run)]) == 0
    return run


def test_a_run_being_trained_is_refused_to_a_second_process_and_a_stale_lock_is_taken_over(small_run, capsys):
    lock = small_run / ".genkit.lock"
    assert not lock.exists()  # released when the run ended
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(str(other.pid))
        assert main(["run", "--resume", str(small_run), "--epochs", "2", "--quiet"]) == 2
        assert f"{small_run} is being trained by process {other.pid}" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert main(["run", "--resume", str(small_run), "--epochs", "2", "--quiet"]) == 0  # its owner is gone
    assert not lock.exists()
    assert [r["epoch"] for r in json.loads((small_run / "metrics.json").read_text())["epochs"]] == [1, 2]


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--lr", "0.1"], "--lr"), (["--limit", "8"], "--limit"), (["--dataset", "fashion-mnist"], "--dataset"),
     (["--set", "latent=3"], "--set"), (["--prior", "mog"], "--prior"), (["--seed", "3", "--amp"], "--seed, --amp")],
)  # fmt: skip
def test_resume_refuses_options_it_would_otherwise_ignore(small_run, extra, named, capsys):
    before = (small_run / "config.json").read_text()
    assert main(["run", "--resume", str(small_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"so {named} cannot be changed" in err
    assert (small_run / "config.json").read_text() == before


def _tamper(run: Path, change) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, run / "checkpoint.pt")


def _sgd_state(state):
    model = genkit.get_model("ae", channels=4, hidden=16)
    state["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3)), "exp_avg of parameter 0 is shaped"),
        (lambda s: s["optimizer"]["state"][0].update(exp_avg_sq=torch.zeros(7)), "exp_avg_sq of parameter 0"),
        (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), "the optimizer's lr is 'fast'"),
        (lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.9,)), "the optimizer's betas is (0.9,)"),
        (lambda s: s["optimizer"]["state"].update({999: {}}), "names a parameter this model does not have"),
        (_sgd_state, "another optimizer's or for other parameters"),
        (lambda s: s["history"][0].pop("train_loss"), "a history record lacks epoch, train_loss"),
    ],
)
def test_a_tampered_training_state_is_one_line_before_it_reaches_torch(small_run, change, says, capsys):
    _tamper(small_run, change)
    code = subprocess.run(
        [sys.executable, "-m", "genkit", "run", "--resume", str(small_run), "--epochs", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert code.returncode == 2, code.stderr  # never a crash by a signal (a mis-shaped moment segfaulted)
    assert code.stderr.count("\n") == 1 and "checkpoint.pt is tampered with or damaged" in code.stderr
    assert says in code.stderr


def test_ill_typed_training_settings_in_config_json_are_one_line(small_run, capsys):
    config = json.loads((small_run / "config.json").read_text())
    config["train"]["compile"] = "yes"
    (small_run / "config.json").write_text(json.dumps(config))
    assert main(["run", "--resume", str(small_run), "--epochs", "2"]) == 2
    assert "config.json: compile must be true or false, got 'yes'" in capsys.readouterr().err


# Class 4: input files that are not plain files or not sane.


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
@pytest.mark.parametrize("command", ["encode", "denoise", "decode"])
def test_a_named_pipe_as_input_is_refused_not_read_forever(saved_run, tmp_path, command):
    pipe = tmp_path / ("in.npz" if command == "decode" else "in.png")
    os.mkfifo(pipe)
    result = _genkit([command, str(saved_run), str(pipe)], tmp_path)  # a reader would block: 120 s timeout
    assert result.returncode == 2, result.stderr
    what = "codes file" if command == "decode" else "image"
    assert result.stderr == f"genkit: error: {what} {pipe} is a named pipe: give a regular file\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_a_named_pipe_in_a_run_folder_is_refused(saved_run, tmp_path):
    (saved_run / "config.json").unlink()
    os.mkfifo(saved_run / "config.json")
    result = _genkit(["sample", str(saved_run), "-o", str(tmp_path / "s.png")], tmp_path)
    assert result.returncode == 2 and "config.json is a named pipe" in result.stderr
    assert result.stderr.count("\n") == 1


def _codes_files(folder: Path) -> dict[str, tuple[Path, str]]:
    import numpy as np

    good = folder / "good.npz"
    np.savez(good, codes=np.zeros((2, 2), np.float16), names=np.array(["a", "b"]))
    raw = good.read_bytes()
    cases = {
        "0-d": (dict(codes=np.float32(3)), "holds codes float32 (); this run's model needs floats (N, 2)"),
        "structured": (dict(codes=np.zeros(3, dtype=[("a", "f4")])), "this run's model needs floats (N, 2)"),
        "strings": (dict(codes=np.array([["a", "b"]])), "holds codes <U1 (1, 2)"),
        "empty": (dict(codes=np.zeros((0, 2), np.float32)), "holds no codes"),
        "nan": (dict(codes=np.full((1, 2), np.nan, np.float32)), "holds NaN or infinite codes"),
        "nul-name": (dict(codes=np.zeros((1, 2)), names=np.array(["a\0b"])), "name 'a\\x00b' cannot be a file name"),
        "short-names": (dict(codes=np.zeros((2, 2)), names=np.array(["a"])), "not 2 strings"),
        "number-names": (dict(codes=np.zeros((1, 2)), names=np.array([7])), "not 1 strings"),
    }
    files = {}
    for name, (arrays, says) in cases.items():
        np.savez(folder / f"{name}.npz", **arrays)
        files[name] = (folder / f"{name}.npz", says)
    (folder / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (folder / "truncated.npz", "is not a codes file written by genkit encode")
    damaged = bytearray(raw)
    damaged[raw.index(b"\x93NUMPY") + 70] ^= 0xFF  # inside the stored array: the zip's CRC no longer matches
    (folder / "crc.npz").write_bytes(bytes(damaged))
    files["crc"] = (folder / "crc.npz", "Bad CRC-32")
    return files


def test_damaged_or_odd_codes_files_are_one_line_each(saved_run, tmp_path, capsys):
    for name, (path, says) in _codes_files(tmp_path).items():
        code = main(["decode", str(saved_run), str(path), "-o", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and says in err, (name, err)
        assert not (tmp_path / name).exists()


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from genkit.data import load_images

    levels = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")  # really stored with 16 bits
    loaded = load_images([tmp_path / "wide.png"], 28, 1)
    assert torch.allclose(loaded[0, 0], torch.from_numpy(levels / 65535.0).float(), atol=0.5 / 255 + 1e-6)


def test_a_png_with_a_huge_text_chunk_is_read(saved_run, tmp_path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (8 << 20))
    Image.new("L", (28, 28), 128).save(tmp_path / "chatty.png", pnginfo=info)
    result = _genkit(["encode", str(saved_run), str(tmp_path / "chatty.png"), "-o", str(tmp_path / "c.npz")], tmp_path)
    assert result.returncode == 0 and result.stderr == "" and "1 image(s)" in result.stdout


def _mnist_raw(root: Path, images: bytes, gz: bool = True) -> Path:
    """An MNIST raw folder whose test images file holds ``images``; the rest are valid tiny files."""
    import gzip

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    two = (2).to_bytes(4, "big")
    files = {
        "train-images-idx3-ubyte": b"\0\0\x08\x03" + two + (28).to_bytes(4, "big") * 2 + bytes(2 * 784),
        "train-labels-idx1-ubyte": b"\0\0\x08\x01" + two + bytes(2),
        "t10k-images-idx3-ubyte": images,
        "t10k-labels-idx1-ubyte": b"\0\0\x08\x01" + two + bytes(2),
    }
    for stem, content in files.items():
        (raw / f"{stem}.gz").write_bytes(gzip.compress(content) if gz or stem != "t10k-images-idx3-ubyte" else content)
    return root


@pytest.mark.parametrize(
    "case, says",
    [
        ("corrupt-deflate", "is not a readable IDX file"),
        ("no-header", "no IDX header for unsigned bytes"),
        ("no-images", "holds no images"),
        ("short", "is not a readable IDX file"),
    ],
)
def test_a_damaged_dataset_file_is_one_line(tmp_path, case, says):
    import gzip

    from genkit.data import load_torchvision_dataset
    from genkit.errors import DataError

    header = b"\0\0\x08\x03" + (28).to_bytes(4, "big") * 2
    contents = {
        "corrupt-deflate": bytearray(gzip.compress(b"\0\0\x08\x03" + bytes(2000))),
        "no-header": gzip.compress(b"PK\x03\x04" + bytes(100)),
        "no-images": gzip.compress(b"\0\0\x08\x03" + (0).to_bytes(4, "big") + header[4:]),
        "short": gzip.compress(b"\0\0\x08\x03" + (2).to_bytes(4, "big") + header[4:] + bytes(100)),
    }
    content = contents[case]
    if case == "corrupt-deflate":
        content[20:40] = b"\xff" * 20
    root = _mnist_raw(tmp_path, bytes(content), gz=False)
    with pytest.raises(DataError, match=says) as caught:
        load_torchvision_dataset("mnist", "test", root)
    assert "\n" not in str(caught.value)


# Class 5: numbers and sizes.


def test_sample_counts_are_capped_and_drawn_in_bounded_chunks(saved_run, tmp_path, capsys, monkeypatch):
    from genkit import report
    from genkit.model import Model

    assert main(["sample", str(saved_run), "-n", str(report.MAX_SAMPLES + 1), "-o", str(tmp_path / "s.png")]) == 2
    assert f"must be between 1 and {report.MAX_SAMPLES}, got" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()
    sizes = []
    original = Model.sample
    monkeypatch.setattr(Model, "sample", lambda self, n, g=None: sizes.append(n) or original(self, n, g))
    assert main(["sample", str(saved_run), "-n", "1200", "-o", str(tmp_path / "s.png")]) == 0
    assert sizes == [500, 500, 200]
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size == (35 * 30 + 2, 35 * 30 + 2)  # a square grid, not 8 wide


@pytest.mark.parametrize("suffix", [".psd", ".foo", ""])
def test_an_output_suffix_pillow_cannot_write_is_one_line(saved_run, tmp_path, capsys, suffix):
    assert main(["sample", str(saved_run), "-o", str(tmp_path / f"s{suffix}")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give a file name ending in .png or .jpg" in err


def test_a_full_disk_while_saving_weights_is_the_one_line_disk_message(image_folder, tmp_path, capsys, monkeypatch):
    real = Path.write_bytes

    def full_for_run_files(self, data):
        if self.name.startswith((".model.safetensors", ".checkpoint.pt")):
            with open(self, "wb") as f:
                f.write(data[:100])
            raise OSError(28, "No space left on device")  # as a failed write() reports it: no file name
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_run_files)
    run = tmp_path / "full"
    args = ["run", "ae", "--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--quiet"]
    assert main([*args, "--dataset", str(image_folder), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genkit: error: {run}") and "No space left on device (free some space" in err
    assert err.count("\n") == 1
    assert not list(run.glob(".*.tmp"))  # no half-written temporary is left behind


@pytest.mark.parametrize(
    "option, says",
    [
        (["--batch-size", str(10**23)], "batch_size must be at most 2**53, got 10000000...(24 digits)"),
        (["--lr-warmup", str(10**30)], "lr_warmup must be at most 2**53"),
        (["--set", f"encoder.hidden={10**40}"], "encoder conv: hidden must be at most 2**53"),
        (["--set", f"loss.kl_warmup={-(10**20)}"], "kl_warmup must be at least -2**53"),
    ],
)
def test_astronomical_integers_are_refused_before_a_run_folder_exists(image_folder, tmp_path, capsys, option, says):
    run = tmp_path / "huge"
    code = main(["run", "vae-conv", *option, "--epochs", "1", "--dataset", str(image_folder), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1
    assert not run.exists()


def test_an_image_over_pillows_pixel_limit_gives_no_warning_and_twice_over_is_refused(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    from genkit.data import load_images
    from genkit.errors import DataError

    Image.new("L", (28, 28), 9).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 784 pixels: over the limit, under twice the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_images([tmp_path / "big.png"], 28, 1).shape == (1, 1, 28, 28)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(DataError, match="decompression bomb"):
        load_images([tmp_path / "big.png"], 28, 1)
