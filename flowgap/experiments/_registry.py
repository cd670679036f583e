"""The experiments `flowgap run NAME` knows, and the one way to run them."""

import dataclasses
import importlib
import pathlib
import pkgutil
from collections.abc import Callable

import jax

from ..sweeps._io import write_npz
from ._output import make_folder, run_folder, save_figure, write_json, write_netcdf
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
    holds `settings.json`, `results.json` (table rows and fits), `arrays.npz`
    (loadable with `np.load(..., allow_pickle=False)`), `results.nc` (the
    result's `dataset()`, netCDF) and `figure.png`.
    """
    experiment = get(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SettingError(f"`seed` must be a non-negative integer, got {seed!r}")
    settings = settings_for(experiment, quick=quick, dtype=dtype, overrides=overrides)
    folder = output_folder(name, out, force) if save else None
    result = experiment.run(settings, seed=seed, progress=progress)
    if folder is not None:
        _save(folder, experiment, result, dict(seed=seed, dtype=dtype, quick=quick))
    return result, folder


def _save(folder: pathlib.Path, experiment: Experiment, result, meta: dict) -> None:
    from importlib.metadata import version

    write_json(
        folder / "settings.json",
        dict(
            experiment=experiment.name,
            flowgap=version("flowgap"),
            **meta,
            settings=result.settings,
        ),
    )
    write_json(folder / "results.json", dict(rows=result.rows, fits=result.fits))
    write_npz(folder / "arrays.npz", result.curves)
    write_netcdf(folder / "results.nc", result.dataset())
    save_figure(folder / "figure.png", result.figure())
