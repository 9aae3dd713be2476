"""Built-in datasets (the ``genkit.datasets`` group), read from torchvision's layouts under the data root and
downloaded there by torchvision when missing."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from genkit.data import DatasetSource, ImageData, ImageFolderStream, download, load_idx_dataset
from genkit.errors import DataError
from genkit.files import require_regular_file

DIGITS = [str(i) for i in range(10)]


class MNIST(DatasetSource):
    """MNIST handwritten digits: 60 000 training and 10 000 test images, 28x28 grayscale."""

    classes: ClassVar[list[str]] = DIGITS

    def load(self, root: Path, split: str) -> ImageData:
        return load_idx_dataset(root, "MNIST", split, "mnist", self.classes)


class FashionMNIST(DatasetSource):
    """Fashion-MNIST (Zalando): 60 000 training and 10 000 test images of clothing, 28x28 grayscale."""

    classes: ClassVar[list[str]] = [
        "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
    ]  # fmt: skip

    def load(self, root: Path, split: str) -> ImageData:
        return load_idx_dataset(root, "FashionMNIST", split, "fashion-mnist", self.classes)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for CIFAR's batch files that builds numpy arrays and nothing else: a tampered file that names
    any other function or class is refused, so that no code in it runs."""

    allowed: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never does") from None


class CIFAR10(DatasetSource):
    """CIFAR-10 (Krizhevsky 2009): 50 000 training and 10 000 test images in 10 classes, 32x32 RGB."""

    image_size: ClassVar[int] = 32
    channels: ClassVar[int] = 3
    classes: ClassVar[list[str]] = [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    files: ClassVar[dict[str, list[str]]] = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

    def load(self, root: Path, split: str) -> ImageData:
        folder = root / "cifar-10-batches-py"
        if not all((folder / name).exists() for name in self.files[split]):
            download("cifar10", lambda tvd: tvd.CIFAR10(str(root), train=True, download=True), f"unpack {folder}")
        images, labels = [], []
        for name in self.files[split]:
            path = require_regular_file(folder / name, "CIFAR-10 batch")
            try:
                with open(path, "rb") as f:
                    batch = _ArraysOnly(f, encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, EOFError, OSError, KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path} is not a CIFAR-10 batch ({exc}); delete it to download it again") from None
            images.append(data)
        tensor = torch.from_numpy(np.concatenate(images)).float().div_(255.0)
        return ImageData(tensor, torch.from_numpy(np.concatenate(labels)), "cifar10", self.classes)


class SVHN(DatasetSource):
    """SVHN (Netzer et al. 2011): Street View house numbers, 73 257 training and 26 032 test digits, 32x32 RGB."""

    image_size: ClassVar[int] = 32
    channels: ClassVar[int] = 3
    classes: ClassVar[list[str]] = DIGITS

    def load(self, root: Path, split: str) -> ImageData:
        from scipy.io import loadmat

        folder = root / "SVHN"
        path = folder / f"{split}_32x32.mat"
        if not path.exists():
            download(
                "svhn", lambda tvd: tvd.SVHN(str(folder), split=split, download=True), f"put {path.name} in {folder}"
            )
        require_regular_file(path, "SVHN file")
        try:  # scipy raises many types for a damaged file (MatReadError, IndexError, ValueError...)
            mat = loadmat(str(path))
            images = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # (32, 32, 3, N) -> N C H W
            labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # SVHN writes the digit 0 as 10
        except Exception as exc:
            raise DataError(f"{path} is not an SVHN .mat file ({exc}); delete it to download it again") from None
        if len(images) != len(labels):
            raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
        return ImageData(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels), "svhn", self.classes)


class CelebA(DatasetSource):
    """CelebA (Liu et al. 2015): aligned celebrity faces, centre-cropped to 148x148 and resized to 64x64 RGB.

    The 162 770 training images are read from disk each epoch; the test split is the first 5000 images of the
    official test partition, held in memory."""

    image_size: ClassVar[int] = 64
    channels: ClassVar[int] = 3
    partitions: ClassVar[dict[str, str]] = {"train": "0", "test": "2"}
    test_images: ClassVar[int] = 5000
    crop: ClassVar[int] = 148  # as PyTorch-VAE does: the face, without most of the background

    def load(self, root: Path, split: str) -> ImageData | ImageFolderStream:
        folder = root / "celeba"
        listing = folder / "list_eval_partition.txt"
        if not listing.exists():
            download("celeba", lambda tvd: tvd.CelebA(str(root), split="all", download=True), f"unpack {folder}")
        require_regular_file(listing, "CelebA partition list")
        files = []
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            fields = line.split()
            if len(fields) != 2:
                raise DataError(f"{listing}, line {number}: expected 'FILE PARTITION', found {line!r}")
            if fields[1] == self.partitions[split]:
                files.append(folder / "img_align_celeba" / Path(fields[0]).name)
        stream = ImageFolderStream(files, [0] * len(files), self.image_size, self.channels, "celeba", [], self.crop)
        if split == "train":
            return stream
        test = stream.subset(self.test_images)
        return ImageData(test.head(len(test)), torch.zeros(len(test), dtype=torch.long), "celeba", [])
