"""Datasets: the ``genkit.datasets`` plugins (MNIST, Fashion-MNIST, CIFAR-10, SVHN, CelebA in torchvision's
layouts) and folders of images, as in-memory tensors or streamed from disk."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from genkit.config import DATA_ENV
from genkit.errors import DataError
from genkit.files import require_regular_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class ImageData:
    """A split held as one tensor: ``images`` float (N, C, H, W) in [0, 1] and integer ``labels``."""

    images: Tensor
    labels: Tensor
    name: str = ""
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None) -> ImageData:
        """The first ``n`` items (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageData(self.images[:n], self.labels[:n], self.name, self.classes)

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device), self.name, self.classes)


def binarize(images: Tensor, seed: int) -> Tensor:
    """Bernoulli draws of grey levels in [0, 1]: one fixed binarisation (of a test set) for a given seed."""
    return torch.bernoulli(images.float(), generator=torch.Generator(device=images.device).manual_seed(seed))


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_dir``, else ``$GENKIT_DATA_DIR``, else ``~/.cache/genkit/data``."""
    if data_dir is not None:
        return _expand(data_dir)
    if os.environ.get(DATA_ENV):
        return _expand(os.environ[DATA_ENV])
    return Path.home() / ".cache" / "genkit" / "data"


def _expand(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded; a ``~user`` that does not exist is a ``DataError``."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # Path.expanduser cannot find that home folder
        raise DataError(f"{path}: cannot expand ~ (no such user or home folder)") from None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not); a damaged one is a one-line ``DataError``."""
    require_regular_file(path, "dataset file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if raw[:3] != b"\0\0\x08":  # two zero bytes, then the code of unsigned bytes
            raise ValueError("no IDX header for unsigned bytes")
        dims = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    except (OSError, EOFError, ValueError, IndexError, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataError(f"{path} is not a readable IDX file ({exc}); delete it to download it again") from None


def _find_idx(raw_dir: Path, stem: str) -> Path | None:
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


class DatasetSource:
    """Base of the ``genkit.datasets`` plugins: a dataset by name, read from its folder under the data root and
    downloaded there (as torchvision does) when missing. A model's image size and channels default to the
    dataset's native ones."""

    image_size: ClassVar[int] = 28
    channels: ClassVar[int] = 1
    classes: ClassVar[list[str]] = []

    def load(self, root: Path, split: str) -> ImageData | ImageFolderStream:
        """The ``split`` (``"train"`` or ``"test"``) from under the data ``root``."""
        raise NotImplementedError


def load_idx_dataset(root: Path, folder: str, split: str, name: str, classes: list[str]) -> ImageData:
    """An MNIST-format split from ``<root>/<folder>/raw`` (gzipped or not), downloaded by torchvision if missing."""
    raw_dir = root / folder / "raw"
    paths = [_find_idx(raw_dir, stem) for stem in _IDX_FILES[split]]
    if None in paths:
        stems = ", ".join(f"{s}.gz" for pair in _IDX_FILES.values() for s in pair)
        download(
            name,
            lambda tvd: getattr(tvd, folder)(str(root), train=True, download=True),
            f"put {stems} in {raw_dir}",
        )
        paths = [_find_idx(raw_dir, stem) for stem in _IDX_FILES[split]]
        if None in paths:
            raise DataError(f"{name} files missing in {raw_dir} after download")
    images, labels = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
    if images.shape[0] == 0:
        raise DataError(f"{paths[0]} holds no images; delete it to download it again")
    if images.shape[0] != labels.shape[0] or images.ndim != 3:
        raise DataError(f"{raw_dir}: images {images.shape} and labels {labels.shape} do not match")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return ImageData(tensor, torch.from_numpy(labels.astype(np.int64)), name, classes)


def load_torchvision_dataset(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """One split of a registered dataset (e.g. ``mnist``), held in memory."""
    from genkit.registry import datasets

    data = datasets.load(name)().load(data_root(data_dir), split)
    if not isinstance(data, ImageData):
        raise DataError(f"dataset {name} is streamed from disk: use load_dataset({name!r}, stream=True)")
    return data


def download(name: str, fetch: Callable[[Any], Any], manual: str) -> None:
    """Download a dataset with ``fetch(torchvision.datasets)``; a one-line ``DataError`` saying what to do if it
    fails (no network, a changed URL, a quota)."""
    import torchvision.datasets as tvd

    try:
        fetch(tvd)
    except Exception as exc:
        raise DataError(
            f"{name} is not in the data folder and could not be downloaded ({type(exc).__name__}); {manual}, "
            f"or point --data-dir / ${DATA_ENV} at a folder that holds it"
        ) from None


class ImageFolderStream(torch.utils.data.Dataset):
    """Images of a folder read from disk when indexed, for folders too large to hold in memory.

    Items are ``(image, label)`` with the image (C, H, W) in [0, 1]; the trainer feeds them through a
    ``DataLoader`` (with a ``DistributedSampler`` when several processes train).
    """

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        image_size: int,
        channels: int,
        name: str,
        classes: list[str],
        crop: int | None = None,
    ) -> None:
        self.files, self.labels = files, labels
        self.image_size, self.channels, self.crop = image_size, channels, crop  # crop: a centred square first
        self.name, self.classes = name, classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = _read_image(self.files[index], self.image_size, self.channels, self.crop)
        return image.float().div_(255.0), self.labels[index]

    def subset(self, n: int | None) -> ImageFolderStream:
        """The first ``n`` items (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageFolderStream(
            self.files[:n], self.labels[:n], self.image_size, self.channels, self.name, self.classes, self.crop
        )

    def head(self, n: int) -> Tensor:
        """The first ``n`` images as one batch (for checks before training)."""
        return torch.stack([self[i][0] for i in range(min(n, len(self)))])


def _open_image(path: Path) -> Any:
    """A loaded PIL image with 8 bits per channel, from a regular file; anything unreadable is a ``DataError``.

    16-bit grayscale (Pillow's ``I;16``/``I`` modes) is scaled to 8 bits: converted directly, Pillow clips every
    value above 255 and a 16-bit picture comes out nearly all white.
    """
    from PIL import Image, UnidentifiedImageError

    require_regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            # Pillow warns (in three lines) between 1x and 2x its pixel limit and refuses above 2x: the refusal
            # is enough
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # reads the pixels and closes the file
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if img.mode.startswith("I"):
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    return img


def _read_image(file: Path, image_size: int, channels: int, crop: int | None = None) -> Tensor:
    """One image file as uint8 (C, H, W), converted to ``channels``, centre-cropped to ``crop`` pixels square if
    given, and resized; a one-line error otherwise."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    img = _open_image(file).convert("L" if channels == 1 else "RGB")
    if crop:
        left, top = (img.width - crop) // 2, (img.height - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    return pil_to_tensor(img.resize((image_size, image_size), Image.Resampling.BILINEAR))


def load_image_folder(
    path: str | os.PathLike[str],
    image_size: int = 28,
    channels: int = 1,
    test_fraction: float = 0.1,
    seed: int = 0,
    stream: bool = False,
) -> tuple[ImageData | ImageFolderStream, ImageData]:
    """Images under ``path`` (PNG/JPEG...), resized to ``image_size``; sub-folder names become labels.

    A fixed, seeded ``test_fraction`` of the images is held out as the test split (in memory). With
    ``stream`` the training split stays on disk as an :class:`ImageFolderStream`.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    if len(files) < 2:
        raise DataError(f"{root} holds {len(files)} image; a train and a test split need at least 2")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    labels = [classes.index(p.parent.relative_to(root).as_posix()) for p in files]
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(len(files) * test_fraction))

    def in_memory(indices: list[int]) -> ImageData:
        images = torch.stack([_read_image(files[i], image_size, channels) for i in indices]).float().div_(255.0)
        return ImageData(images, torch.tensor([labels[i] for i in indices]), root.name, classes)

    train_indices, test_indices = order[n_test:], order[:n_test]
    if stream:
        train = ImageFolderStream(
            [files[i] for i in train_indices],
            [labels[i] for i in train_indices],
            image_size,
            channels,
            root.name,
            classes,
        )
        return train, in_memory(test_indices)
    return in_memory(train_indices), in_memory(test_indices)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    stream: bool = False,
) -> tuple[ImageData | ImageFolderStream, ImageData]:
    """(train, test) for a registered dataset (``genkit list --kind datasets``) or a path to an image folder.

    Images come at ``image_size`` and ``channels`` (default: the dataset's own; 28x28 grayscale for a folder).
    ``stream`` keeps an image folder's training split on disk (registered datasets decide for themselves).
    """
    from genkit.registry import datasets

    if not name:
        raise DataError("no dataset given: name one (genkit list --kind datasets) or the path of a folder of images")
    if name in datasets.names():
        source = datasets.load(name)()
        root = data_root(data_dir)
        size, channels = image_size or source.image_size, channels or source.channels
        train, test = (_fit(source.load(root, split), size, channels) for split in ("train", "test"))
        if len(test) == 0:
            raise DataError(f"the {name} test split is empty: delete its files under {root} to download them again")
        return train, test  # type: ignore[return-value]
    if _expand(name).is_dir():
        return load_image_folder(_expand(name), image_size or 28, channels or 1, stream=stream)
    known = ", ".join(datasets.names())
    raise DataError(f"unknown dataset {name!r}: use one of {known}, or the path of a folder of images")


def dataset_shape(name: str) -> tuple[int, int] | None:
    """(image size, channels) of a registered dataset; None for anything else (a folder takes the model's)."""
    from genkit.registry import datasets

    if name not in datasets.names():
        return None
    source = datasets.load(name)
    return source.image_size, source.channels


def _fit(data: ImageData | ImageFolderStream, size: int, channels: int) -> ImageData | ImageFolderStream:
    """``data`` at ``size`` x ``size`` with ``channels`` (resized with antialiasing; RGB to gray by luminance)."""
    if isinstance(data, ImageFolderStream):
        data.image_size, data.channels = size, channels
        return data
    images = data.images
    if images.shape[1] == 3 and channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    images = images.clamp(0, 1).contiguous()
    return data if images is data.images else ImageData(images, data.labels, data.name, data.classes)


def load_images(paths: list[str] | list[Path], image_size: int, channels: int) -> Tensor:
    """Image files as a (N, C, H, W) batch in [0, 1]; a size or channel mismatch is a ``ShapeError``."""
    from torchvision.transforms.functional import pil_to_tensor

    from genkit.errors import ShapeError

    if not paths:
        raise DataError("no image files given")
    batch = []
    for path in map(Path, paths):
        img = _open_image(path)
        img = img.convert("RGB") if img.mode == "P" else img
        bands = [b for b in img.getbands() if b != "A"]
        have = 1 if len(bands) == 1 else 3
        if have == 3 and channels == 1 and _is_gray(img):
            have = 1  # an RGB file holding a grayscale picture
        if have != channels or img.size != (image_size, image_size):
            kind = {1: "grayscale", 3: "RGB"}
            want = kind.get(channels, f"{channels}-channel")
            raise ShapeError(
                f"{path} is {img.size[0]}x{img.size[1]} {kind[have]}, but the model takes "
                f"{image_size}x{image_size} {want} images: convert it first"
            )
        batch.append(pil_to_tensor(img.convert("L" if channels == 1 else "RGB")))
    return torch.stack(batch).float().div_(255.0)


def iter_image_batches(
    paths: list[str] | list[Path], image_size: int, channels: int, batch_size: int = 256
) -> Iterator[Tensor]:
    """``load_images`` a batch of files at a time, so that memory holds one batch of any number of files."""
    if not paths:
        raise DataError("no image files given")
    for start in range(0, len(paths), batch_size):
        yield load_images(paths[start : start + batch_size], image_size, channels)


class ImageFiles(Sequence[Tensor]):
    """Image files as a sequence of (C, H, W) images in [0, 1], each read (and checked as ``load_images`` does)
    when it is asked for: memory holds one image, however many files there are."""

    def __init__(self, paths: list[str] | list[Path], image_size: int, channels: int) -> None:
        if not paths:
            raise DataError("no image files given")
        self.paths, self.image_size, self.channels = list(paths), image_size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]  # no slices: one image at a time
        return load_images([self.paths[index]], self.image_size, self.channels)[0]


def _is_gray(img: Any) -> bool:
    r, g, b = img.convert("RGB").split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def save_png(image: Tensor, path: str | os.PathLike[str]) -> None:
    """One (C, H, W) image in [0, 1] as PNG: grayscale stays one channel (unlike torchvision's save_image)."""
    from torchvision.transforms.functional import to_pil_image

    from genkit.files import atomic_write, image_format

    picture = to_pil_image(image.detach().float().clamp(0, 1).cpu())
    atomic_write(Path(path), lambda tmp: picture.save(tmp, format=image_format(path)), parents=False)
