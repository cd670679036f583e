"""Atomic file writes: a temporary file in the target's folder, then a rename, so a
reader (or a resumed sweep) sees either the whole old file or the whole new one,
never a half-written one. Numbers are saved without pickle."""

import os
import pathlib
import tempfile

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: pathlib.Path, write) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to
    `path` (`os.replace`, atomic on POSIX). On any error the temporary file is
    removed and `path` is left as it was."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use normal perms
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz(path: pathlib.Path, arrays: dict) -> None:
    """Save `{name: array}` as an uncompressed npz file, atomically. Object arrays
    are refused (`TypeError`): they would need pickle to load."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            raise TypeError(f"array `{key}` has dtype object; refusing to pickle it")
    atomic_write(path, lambda f: np.savez(f, **arrays))
