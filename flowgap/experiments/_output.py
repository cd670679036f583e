"""Run folders: created fresh, never overwritten without `force`, files written
atomically (temporary file, then rename), numbers loadable without pickle, JSON
strict (NaN and ±inf are written as null)."""

import datetime
import io
import json
import math
import os
import pathlib
import threading
from collections.abc import Callable, Mapping

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


def json_text(data, *, indent: int | None = 2) -> str:
    """`data` as strict JSON (RFC 8259), keys sorted: NaN, inf and −inf become
    `null` (JSON has no such numbers; a bare `NaN` would break strict parsers),
    arrays become lists and Configs objects. Anything else that JSON cannot hold
    raises `TypeError`, and a non-finite number that slipped through raises
    `ValueError` (`allow_nan=False`) rather than being written."""
    return json.dumps(_strict(data), indent=indent, sort_keys=True, allow_nan=False)


def write_json(path: pathlib.Path, data) -> None:
    """`json_text(data)` written atomically to `path`."""
    text = json_text(data) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def netcdf_bytes(dataset) -> bytes:
    """`dataset` as netCDF (h5netcdf). HDF5 reserves "/" in names, so a "/" in a
    variable or dimension name is written as "|"."""

    def clean(name):
        return str(name).replace("/", "|")

    names = {name: clean(name) for name in [*dataset.variables, *dataset.dims]}
    renamed = dataset.rename({k: v for k, v in names.items() if k != v})
    return bytes(renamed.to_netcdf(engine="h5netcdf"))


def write_netcdf(path: pathlib.Path, dataset) -> None:
    """`netcdf_bytes(dataset)` written atomically to `path`."""
    data = netcdf_bytes(dataset)
    atomic_write(path, lambda f: f.write(data))


def figure_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=130)
    return buffer.getvalue()


def save_figure(path: pathlib.Path, figure) -> None:
    data = figure_bytes(figure)
    atomic_write(path, lambda f: f.write(data))


class FolderClosed(Exception):
    """A write to a `RunFolder` after its run was abandoned."""


class RunFolder:
    """A run's folder and the files the run has written to it, in order.

    Each `write` holds a lock while its file lands (contents are prepared before,
    so the lock is held for a file write only); `close` takes the lock, so it
    waits for a file being written, and refuses every later write. An interrupt
    can therefore say exactly which files the run left.
    """

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.written: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    def write(self, name: str, save: Callable[[pathlib.Path], None], then=None):
        """`save(path)` for `path = folder/name`, then `then()` if given, both
        under the lock; `FolderClosed` once the folder is closed."""
        with self._lock:
            if self._closed:
                raise FolderClosed(name)
            save(self.path / name)
            if name not in self.written:
                self.written.append(name)
            if then is not None:
                then()

    def write_json(self, name: str, data, then=None) -> None:
        text = (json_text(data) + "\n").encode()
        self.write(name, lambda path: atomic_write(path, lambda f: f.write(text)), then)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write(name, lambda path: atomic_write(path, lambda f: f.write(data)))

    def close(self, last=None, timeout: float = 1.0) -> list[str]:
        """Refuse further writes, after the one in progress (waited for at most
        `timeout` seconds). The first `close` also writes its last file: `last()`
        (under the lock) gives `(name, data)` to write as JSON, or None.
        **Returns:** the files written, in order."""
        locked = self._lock.acquire(timeout=timeout)
        try:
            if not self._closed:
                self._closed = True
                final = None if last is None else last()
                if final is not None:
                    name, data = final
                    write_json(self.path / name, data)
                    if name not in self.written:
                        self.written.append(name)
            return list(self.written)
        finally:
            if locked:
                self._lock.release()


def _strict(value):
    """`value` with every number JSON can hold as itself and every non-finite
    float as None (see `json_text`)."""
    if isinstance(value, Mapping):  # dicts and Configs
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic | np.ndarray) or hasattr(value, "__array__"):
        return _strict(np.asarray(value).tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
