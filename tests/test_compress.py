"""Entropy-coded compression: bit-exact round trips, the rate the code model predicts, and damaged files refused."""

import re

import pytest
import torch

import genkit
from genkit import compress as gkc
from genkit.cli import main

SMALL = ["--set", "channels=4", "--set", "hidden=16", "--epochs", "1", "--batch-size", "16", "--quiet"]


#: the compressor with local codes: a 7x7 grid of 1 channel
FCN = {"encoder": "fcn", "decoder": "fcn", "latent": 49}


@pytest.fixture(params=["vq-vae", "ae", "compressor", "compressor-fcn"])
def coded(request, tiny_images):
    torch.manual_seed(0)
    name, nets = (
        (request.param, {"latent": 8, "hidden": 16}) if request.param != "compressor-fcn" else ("compressor", FCN)
    )
    model = genkit.get_model(name, channels=4, **nets).eval()
    if request.param == "vq-vae":  # set the codebook from codes, as the first training step does
        model.encoder.train()(tiny_images)
        model.eval()
    code_model = gkc.fit_code_model(model, tiny_images, step=0.5)
    data, decoded = gkc.compress(model, tiny_images, code_model, "m" * 64, "c" * 64, 0.5)
    return model, code_model, data, decoded


def test_decompress_gives_exactly_the_decoded_images(coded, tiny_images):
    model, code_model, data, decoded = coded
    again = torch.cat(list(gkc.decompress(model, data, code_model)))
    assert torch.equal(again, decoded)  # bit for bit
    symbols = gkc.symbols(model, tiny_images, code_model)
    assert torch.equal(decoded, gkc.reconstruct(model, symbols, code_model))
    if code_model.kind == "vq":  # the codes are the codebook vectors the encoder chose
        with torch.no_grad():
            torch.testing.assert_close(decoded, model.reconstruct(tiny_images), rtol=0, atol=1e-6)


def test_the_coded_size_is_the_code_models_rate(coded, tiny_images):
    model, code_model, data, _ = coded
    header, words = gkc.read_header(data, "f")
    ideal = code_model.bits(gkc.symbols(model, tiny_images, code_model))
    assert ideal > 200
    assert abs(8 * len(words) - ideal) <= 0.05 * ideal + 64  # a range coder's overhead is a few words
    assert header["count"] == 64 and header["shape"] == [1, 28, 28] and header["format"] == gkc.FORMAT_VERSION
    if gkc.prior_tables(model):  # and the code model's rate is the one the rd loss trained (the prior's, in bits)
        with torch.no_grad():
            trained = -model.prior.log_mass(model.encode(tiny_images).mean).sum() / torch.log(torch.tensor(2.0))
        assert ideal == pytest.approx(float(trained), rel=0.01)


def test_damaged_files_are_refused_in_one_line(coded):
    model, code_model, data, _ = coded
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    cases = {
        b"": "is empty",
        b"PNG\x00 not ours": "not a genkit compressed file",
        data[:-4]: "damaged or truncated",
        bytes(flipped): "damaged or truncated",
        data[:10]: "header cannot be read",
    }
    for damaged, says in cases.items():
        with pytest.raises(genkit.DataError, match=says):
            list(gkc.decompress(model, damaged, code_model, "x.gkc"))


def test_compress_and_decompress_on_the_command_line(image_folder, tmp_path, capsys):
    run = tmp_path / "vq"
    assert main(["run", "vq-vae", *SMALL, "--dataset", str(image_folder), "--out", str(run)]) == 0
    images = sorted(str(p) for p in image_folder.rglob("*.png"))[:10]
    out = tmp_path / "x.gkc"
    capsys.readouterr()
    assert main(["compress", str(run), *images, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    per_image = float(re.search(r"([\d.]+) bytes/image", printed).group(1))
    assert per_image == pytest.approx(out.stat().st_size / 10, abs=0.05)
    assert main(["decompress", str(run), str(out), "-o", str(tmp_path / "back")]) == 0
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [f"{i:05d}.png" for i in range(10)]
    # the folder exists now: refused, and a damaged file leaves no folder behind
    assert main(["decompress", str(run), str(out), "-o", str(tmp_path / "back")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    out.write_bytes(out.read_bytes()[:-4])
    assert main(["decompress", str(run), str(out), "-o", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged or truncated" in err
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken-*"))


def test_a_file_from_another_model_is_refused(image_folder, tmp_path, capsys):
    runs = [tmp_path / "a", tmp_path / "b"]
    for seed, run in enumerate(runs):
        args = ["run", "ae", "--latent", "4", *SMALL, "--seed", str(seed), "--dataset", str(image_folder)]
        assert main([*args, "--out", str(run)]) == 0
    image = str(next(image_folder.rglob("*.png")))
    assert main(["compress", str(runs[0]), image, "-o", str(tmp_path / "a.gkc")]) == 0
    capsys.readouterr()
    assert main(["decompress", str(runs[1]), str(tmp_path / "a.gkc"), "-o", str(tmp_path / "out")]) == 2
    assert "compressed with another model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compress_streams_the_images_a_batch_at_a_time(image_folder, tmp_path, capsys, monkeypatch):
    import genkit.data

    run = tmp_path / "ae"
    assert main(["run", "ae", "--latent", "4", *SMALL, "--dataset", str(image_folder), "--out", str(run)]) == 0
    images = sorted(str(p) for p in image_folder.rglob("*.png"))[:10]
    assert main(["compress", str(run), *images, "-o", str(tmp_path / "one.gkc")]) == 0
    loaded = []
    real = genkit.data.load_images
    monkeypatch.setattr(gkc, "BATCH", 4)
    monkeypatch.setattr(genkit.data, "load_images", lambda paths, *a: loaded.append(len(paths)) or real(paths, *a))
    capsys.readouterr()
    assert main(["compress", str(run), *images, "-o", str(tmp_path / "batched.gkc")]) == 0
    assert loaded == [4, 4, 2]  # never more than a batch of images in memory
    # the coded stream does not depend on how the images were cut into batches
    assert (tmp_path / "batched.gkc").read_bytes() == (tmp_path / "one.gkc").read_bytes()
    assert "10 image(s)" in capsys.readouterr().out
