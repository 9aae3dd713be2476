"""Datasets as plugins: the built-ins read small files written here in each dataset's own format, a third-party
dataset plugin is found like any other, and a run takes its image shape from the dataset."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import genkit
from genkit.cli import main
from genkit.data import load_dataset
from genkit.errors import DataError
from tests.conftest import write_distribution


def _cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def _svhn(root, n=5):
    from scipy.io import savemat

    (root / "SVHN").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": images, "y": np.arange(1, n + 1).reshape(-1, 1) * 2})
    return root


def _celeba(root, n=6):
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        picture = np.zeros((218, 178, 3), dtype=np.uint8)
        picture[35:183, 15:163] = 200  # the centred 148x148 square is bright, the border dark
        Image.fromarray(picture).save(folder / f"{i:06d}.jpg", quality=95)
        lines.append(f"{i:06d}.jpg {0 if i < 4 else 2}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_cifar10_is_read_from_its_batches(tmp_path):
    train, test = load_dataset("cifar10", _cifar(tmp_path))
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.labels.tolist()[:6] == list(range(6)) and train.classes[0] == "airplane"
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"), encoding="bytes")
    assert torch.equal(test.images[0].mul(255).round().byte().flatten(), torch.from_numpy(raw[b"data"][0]))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    _cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 batch \(refers to builtins.print"):
        load_dataset("cifar10", tmp_path)


def test_svhn_is_read_from_its_mat_files_with_0_for_10(tmp_path):
    train, _ = load_dataset("svhn", _svhn(tmp_path))
    assert train.images.shape == (5, 3, 32, 32) and train.labels.tolist() == [2, 4, 6, 8, 0]
    (tmp_path / "SVHN" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, damaged")
    with pytest.raises(DataError, match=r"is not an SVHN \.mat file"):
        load_dataset("svhn", tmp_path)


def test_celeba_streams_its_training_split_and_crops_the_faces(tmp_path):
    train, test = load_dataset("celeba", _celeba(tmp_path))
    assert len(train) == 4 and test.images.shape == (2, 3, 64, 64)
    assert train[0][0].shape == (3, 64, 64) and train[0][0].min() > 0.7  # the dark border was cropped away


def test_images_are_fitted_to_the_shape_asked_for(tmp_path):
    train, _ = load_dataset("cifar10", _cifar(tmp_path), image_size=28, channels=1)
    assert train.images.shape == (30, 1, 28, 28) and 0 <= train.images.min() and train.images.max() <= 1


def test_an_unknown_dataset_names_the_registered_ones():
    with pytest.raises(DataError, match="unknown dataset 'cifar': use one of celeba, cifar10, fashion-mnist, mnist"):
        load_dataset("cifar")


def test_a_run_takes_its_image_shape_from_the_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", "vae-conv", "--dataset", "cifar10", "--data-dir", str(_cifar(tmp_path / "data")), "--epochs", "1"]
    assert main([*args, "--set", "channels=4", "--set", "hidden=16", "--quiet", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())["model_config"]
    assert (config["image_size"], config["image_channels"]) == (32, 3)
    assert Image.open(run / "samples.png").mode == "RGB"


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3), (64, 3)])
def test_conv_nets_fit_28_32_and_64_pixel_images(size, channels):
    model = genkit.get_model("vae-conv", image_size=size, image_channels=channels, channels=4, hidden=16)
    x = torch.rand(2, channels, size, size)
    assert model.reconstruct(x).shape == x.shape and model.sample(2).shape == x.shape
    smallest = {28: 7, 32: 8, 64: 8}[size]
    assert model.encoder.body[-2].in_features == 8 * smallest * smallest  # 2c channels at the smallest side


def test_a_third_party_dataset_plugin_is_listed_and_trains(plugin_site, image_folder, tmp_path, capsys):
    source = '''
import torch
from genkit.data import DatasetSource, ImageData

class Blobs(DatasetSource):
    """Random blobs, 16x16 grayscale."""
    image_size = 16

    def load(self, root, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return ImageData(torch.rand(32, 1, 16, 16, generator=g), torch.zeros(32, dtype=torch.long), "blobs")
'''
    write_distribution(
        plugin_site, "blob-data", {"genkit.datasets": {"blobs": "fake_blobs:Blobs"}}, {"fake_blobs": source}
    )
    assert main(["list", "--kind", "datasets"]) == 0
    assert "blobs          Random blobs, 16x16 grayscale.  [blob-data]" in capsys.readouterr().out
    run = tmp_path / "run"
    args = ["run", "ae", "--dataset", "blobs", "--set", "channels=4", "--set", "hidden=16", "--epochs", "1"]
    assert main([*args, "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model_config"]["image_size"] == 16
