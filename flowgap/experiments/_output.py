"""Run folders: created fresh, never overwritten without `force`, files written
atomically (temporary file, then rename), numbers loadable without pickle."""

import datetime
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from ..sweeps._io import atomic_write


class OutputError(ValueError):
    """The output folder cannot be used."""


def run_folder(name: str, out: str | os.PathLike | None, force: bool) -> pathlib.Path:
    """`out`, or a new `runs/NAME-YYYYmmdd-HHMMSS[-k]`. An existing non-empty `out`
    is refused unless `force`. A new folder is claimed (created empty) at once;
    `out` is created by `make_folder`."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = pathlib.Path("runs") / f"{name}-{stamp}"
        base.parent.mkdir(parents=True, exist_ok=True)
        folder, k = base, 1
        while True:  # claim the name atomically: two runs may start in one second
            try:
                folder.mkdir()
                break
            except FileExistsError:
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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a parent is a file: say so before any work
        raise OutputError(f"--out {folder} cannot be created: {err.strerror}") from None
    return folder


def write_json(path: pathlib.Path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_netcdf(path: pathlib.Path, dataset) -> None:
    """`dataset` as netCDF (h5netcdf). HDF5 reserves "/" in names, so a "/" in a
    variable or dimension name is written as "|"."""

    def clean(name):
        return str(name).replace("/", "|")

    names = {name: clean(name) for name in [*dataset.variables, *dataset.dims]}
    renamed = dataset.rename({k: v for k, v in names.items() if k != v})
    atomic_write(path, lambda f: f.write(renamed.to_netcdf(engine="h5netcdf")))


def save_figure(path: pathlib.Path, figure) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=130))


def _jsonable(value):
    if isinstance(value, Mapping):  # a Config
        return dict(value)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
