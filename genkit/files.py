"""Files written so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None], parents: bool = True) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers see the old or the new file, never half.

    ``parents=False`` (a user's output file) refuses a missing folder instead of creating it.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut, where the system allows it (best effort)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def image_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format an output image's suffix names (e.g. PNG for ``x.png``); ``ValueError`` if none."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats:
        raise ValueError(f"{Path(path).name}: give a file name ending in .png or .jpg")
    return formats[suffix]
