"""Files written so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from genkit.errors import DataError, GenkitError

#: Environment variable naming genkit's cache root (FID statistics, the plugin listing).
CACHE_ENV = "GENKIT_CACHE_DIR"


def cache_root() -> Path:
    """genkit's cache folder: ``$GENKIT_CACHE_DIR``, else ``~/.cache/genkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "genkit"


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
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, parents: bool = True) -> None:
    """``atomic_write`` of bytes made in memory first: a full disk then fails as an ``OSError`` (ENOSPC).

    (Serialisers that write files themselves, like ``torch.save``, report a full disk as their own error types.)
    """
    atomic_write(path, lambda tmp: tmp.write_bytes(data), parents=parents)


def require_regular_file(
    path: str | os.PathLike[str], what: str = "file", error: type[GenkitError] = DataError, missing_ok: bool = False
) -> Path:
    """``path`` if it is a regular file; else ``error`` in one line (a named pipe would block the reader forever).

    ``missing_ok`` leaves a missing file to the caller, whose own message can say more than "does not exist".
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if missing_ok:
            return path
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError:  # a NUL in the name
        raise error(f"{what} name {str(path)!r} contains a NUL character") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise error(f"{what} {path} is {kind}: give a regular file")
    return path


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
    if suffix not in formats or formats[suffix] not in Image.SAVE:  # e.g. .psd: Pillow reads it but cannot write it
        raise ValueError(f"{Path(path).name}: give a file name ending in .png or .jpg")
    return formats[suffix]
