"""Run folders: created fresh, never overwritten without `force`, files written
atomically (temporary file, then rename), numbers loadable without pickle."""

import datetime
import json
import os
import pathlib

import numpy as np

from ..sweeps._io import atomic_write


class OutputError(ValueError):
    """The output folder cannot be used."""


def run_folder(name: str, out: str | os.PathLike | None, force: bool) -> pathlib.Path:
    """`out`, or a new `runs/NAME-YYYYmmdd-HHMMSS[-k]`. An existing non-empty `out`
    is refused unless `force`. Nothing is created yet (see `make_folder`)."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = pathlib.Path("runs") / f"{name}-{stamp}"
        folder, k = base, 1
        while folder.exists():
            folder, k = base.with_name(f"{base.name}-{k}"), k + 1
    else:
        folder = pathlib.Path(out)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {folder} exists and is not a folder")
        if folder.exists() and any(folder.iterdir()) and not force:
            raise OutputError(
                f"--out {folder} already holds results; pass --force to overwrite"
            )
    return folder


def make_folder(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_json(path: pathlib.Path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_figure(path: pathlib.Path, figure) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=130))


def _jsonable(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
