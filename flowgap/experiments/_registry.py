"""The experiments `flowgap run NAME` knows, and the one way to run them."""

import dataclasses
import importlib
import pathlib
import pkgutil
import threading
from collections.abc import Callable, Mapping

import jax

from ..sweeps._io import write_npz
from ._output import (
    FolderClosed,
    RunFolder,
    figure_bytes,
    make_folder,
    netcdf_bytes,
    run_folder,
)
from ._settings import Setting, SettingError, resolve
from ._sweepable import Sweepable


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named job: documented settings, `--quick` overrides, and a runner
    `run(settings, seed=..., progress=...) -> result` whose result has
    `table()`, `figure()`, `rows`, `fits`, `curves`; and, if the module defines
    `SWEEP`, how `flowgap sweep` runs it over a grid."""

    name: str
    summary: str
    settings: tuple[Setting, ...]
    quick: dict
    run: Callable
    sweep: Sweepable | None = None


def _from_module(module) -> Experiment:
    """An experiment module defines NAME, SETTINGS, QUICK, run and a docstring
    whose first line is its summary."""
    return Experiment(
        name=module.NAME,
        summary=(module.__doc__ or "").strip().splitlines()[0],
        settings=module.SETTINGS,
        quick=module.QUICK,
        run=module.run,
        sweep=getattr(module, "SWEEP", None),  # optional: `flowgap sweep NAME`
    )


def _experiment_modules():
    """Every private module of this package that defines NAME is an experiment,
    so adding a job is adding one file; the headline job is listed first."""
    package = pathlib.Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "NAME"):
            yield module


EXPERIMENTS = dict(
    sorted(
        ((e.name, e) for e in map(_from_module, _experiment_modules())),
        key=lambda item: (item[0] != "step-vs-flow", item[0]),
    )
)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise SettingError(
            f"unknown experiment `{name}`; known: {', '.join(sorted(EXPERIMENTS))}"
        )
    return EXPERIMENTS[name]


def set_precision(dtype: str) -> None:
    """float64 (default) enables JAX's x64 mode; float32 disables it and keeps
    matmuls at "highest" precision so TF32 never swamps a gap on accelerators."""
    if dtype not in ("float64", "float32"):
        raise SettingError(f"`dtype` must be float64 or float32, got {dtype!r}")
    jax.config.update("jax_enable_x64", dtype == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")


def settings_for(
    experiment: Experiment, *, quick: bool, dtype: str, overrides: dict | None
):
    """The first step `flowgap run` and `flowgap sweep` share: the precision, then
    the settings (defaults, then `--quick` overrides, then `overrides`), checked."""
    set_precision(dtype)
    chosen = {**(experiment.quick if quick else {}), **(overrides or {})}
    return resolve(experiment.settings, chosen)


def output_folder(name: str, out, force: bool) -> pathlib.Path:
    """The second shared step: the run folder, created before any computing so a
    bad `--out` fails in the first second rather than after the run."""
    return make_folder(run_folder(name, out, force))


@dataclasses.dataclass
class Job:
    """One prepared run of an experiment: settings resolved and checked, output
    folder created (None when not saving), nothing computed or written yet.

    `begin()` writes `settings.json` and `status.json` (`"running"`);
    `compute()` runs the experiment and writes its results, then `status.json`
    (`"complete"`, or `"failed"` with the error); `interrupt()` stops the writing
    and records `"interrupted"`. The command line calls `compute()` in a worker
    thread so that a signal is handled at once even while XLA computes.
    """

    experiment: Experiment
    settings: Mapping
    seed: int
    meta: dict
    folder: RunFolder | None
    stage: str = "starting"  # then "computing", "saving", "complete", "failed"

    def begin(self) -> None:
        if self.folder is None:
            return
        self._write_settings(self.settings)
        self.folder.write_json("status.json", dict(state="running"))

    def _write_settings(self, settings: Mapping) -> None:
        from importlib.metadata import version

        record = dict(
            experiment=self.experiment.name,
            flowgap=version("flowgap"),
            **self.meta,
            settings=settings,
        )
        self.folder.write_json("settings.json", record)

    def compute(self, progress: bool = True):
        """Run the experiment and save its folder. **Returns:** the result."""
        self.stage = "computing"
        if self.folder is not None:
            _import_output_libraries_in_background()
        try:
            result = self.experiment.run(
                self.settings, seed=self.seed, progress=progress
            )
            if self.folder is not None:
                self.stage = "saving"
                if dict(result.settings) != dict(self.settings):
                    # the job filled in defaults it derives (a data set's preset):
                    # settings.json records the values the run used
                    self._write_settings(result.settings)
                _save(self.folder, result)
                self.folder.write_json(
                    "status.json", dict(state="complete"), then=self._completed
                )
        except FolderClosed:
            raise
        except Exception as err:
            self.stage = "failed"
            if self.folder is not None:
                error = type(err).__name__
                if str(err):
                    error += f": {str(err).splitlines()[0]}"
                status = dict(state="failed", error=error)
                self.folder.close(lambda: ("status.json", status))
            raise
        self._completed()
        return result

    def _completed(self) -> None:
        self.stage = "complete"

    def unsaved(self) -> list[str]:
        """The result files not (yet) written."""
        written = [] if self.folder is None else self.folder.written
        return [name for name in RESULT_FILES if name not in written]

    def interrupt(self) -> list[str]:
        """Stop writing (after the file in progress) and record the interruption
        in `status.json`, unless the run had already finished. **Returns:** the
        files this run wrote, in order."""
        if self.folder is None:
            return []

        def status():  # decided under the folder's lock: the stage is final
            if self.stage in ("complete", "failed"):
                return None
            files = [name for name in self.folder.written if name != "status.json"]
            # the jobs compute their results in one piece: none is partial
            return "status.json", dict(
                state="interrupted",
                stage=self.stage,
                partial_results=False,
                files=files,
            )

        return self.folder.close(status)


def prepare(
    name: str,
    *,
    quick: bool = False,
    seed: int = 0,
    dtype: str = "float64",
    overrides: dict | None = None,
    out=None,
    force: bool = False,
    save: bool = True,
) -> Job:
    """The checks and the folder `run` starts with, before any computing (so a
    bad setting or `--out` fails in the first second). See `run`."""
    experiment = get(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SettingError(f"`seed` must be a non-negative integer, got {seed!r}")
    settings = settings_for(experiment, quick=quick, dtype=dtype, overrides=overrides)
    folder = RunFolder(output_folder(name, out, force)) if save else None
    meta = dict(seed=seed, dtype=dtype, quick=quick)
    return Job(experiment, settings, seed, meta, folder)


def run(
    name: str,
    *,
    quick: bool = False,
    seed: int = 0,
    dtype: str = "float64",
    overrides: dict | None = None,
    out=None,
    force: bool = False,
    save: bool = True,
    progress: bool = True,
):
    """Run experiment `name` and (if `save`) write its folder.

    Settings: the experiment's defaults, then its `--quick` overrides, then
    `overrides` (strings as from `--set key=value`, or Python values).

    **Returns:** `(result, folder)`; `folder` is None when `save=False`. The folder
    holds `settings.json` (written before the computing starts), `results.json`
    (table rows and fits), `arrays.npz` (loadable with
    `np.load(..., allow_pickle=False)`), `results.nc` (the result's `dataset()`,
    netCDF), `figure.png`, and `status.json`: `{"state": "running"}` during the
    run, then `"complete"`, `"failed"` (with the error) or, after Ctrl-C,
    `"interrupted"` (with the stage and the files written). JSON files are strict:
    NaN and ±inf are written as `null`.
    """
    job = prepare(
        name,
        quick=quick,
        seed=seed,
        dtype=dtype,
        overrides=overrides,
        out=out,
        force=force,
        save=save,
    )
    try:
        job.begin()
        result = job.compute(progress)
    except KeyboardInterrupt:
        job.interrupt()
        raise
    return result, None if job.folder is None else job.folder.path


RESULT_FILES = ("results.json", "arrays.npz", "results.nc", "figure.png")


#: what `_save` imports: matplotlib for the figure, xarray and its netCDF
#: engine for results.nc (about 1.5 s together on a 2-core CPU)
OUTPUT_LIBRARIES = ("matplotlib.figure", "xarray", "h5netcdf")


def _import_output_libraries_in_background() -> None:
    """Import `OUTPUT_LIBRARIES` in a daemon thread, so that their import
    overlaps the job's computing instead of adding to its end. Why it is
    safe: XLA compiles and runs without holding the GIL, which leaves it to the
    imports, and Python's per-module import locks make a job that needs one of
    them sooner wait for it rather than import it twice. A failed import is left
    to `_save`, which raises it where it belongs."""

    def load():
        for name in OUTPUT_LIBRARIES:
            try:
                importlib.import_module(name)
            except Exception:  # raised again, with its context, by `_save`
                return

    threading.Thread(target=load, name="flowgap-imports", daemon=True).start()


def _save(folder: RunFolder, result) -> None:
    """The result's files; each one's contents are prepared before it is written,
    so an interrupt waits for a file write at most."""
    folder.write_json("results.json", dict(rows=result.rows, fits=result.fits))
    folder.write("arrays.npz", lambda path: write_npz(path, result.curves))
    folder.write_bytes("results.nc", netcdf_bytes(result.dataset()))
    folder.write_bytes("figure.png", figure_bytes(result.figure()))
