"""`flowgap sweep NAME`: one experiment's point function over a grid, as one
compiled program, in a run folder that survives interruption and resumes."""

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from importlib.metadata import version

import jax
import numpy as np

from ..sweeps import SweepInterrupted, SweepResult, default_batch_size, sweep
from . import _registry
from ._figure import Panel, render_figure
from ._output import save_figure, write_json, write_netcdf
from ._settings import SettingError, resolve
from ._table import Column, render_table

CHUNKS = "chunks"


@dataclasses.dataclass
class SweepRun:
    """A finished sweep of one experiment.

    - `result`: the labelled `SweepResult` (axes: the grid's, then `seed`);
    - `metric`: the output summarised by `table()` and `figure()`;
    - `folder`: where it was written;
    - `context`: what every run shares (e.g. "T = 4"), stated in the titles;
    - `flag`, `flag_meaning`: the experiment's 0/1 output marking successful runs
      to count apart, and what it means (see `Sweepable`).

    A run *succeeded* when its `status` is 0; that is all "succeeded" means. The
    flag is counted separately, over successful runs only.
    """

    experiment: str
    metric: str
    result: SweepResult
    folder: pathlib.Path
    context: str = ""
    flag: str | None = None
    flag_meaning: str = ""

    def summary(self) -> tuple[list, list, np.ndarray, np.ndarray]:
        """(first axis, second axis or [None], mean of `metric` over the seeds and
        any further axes counting successful runs only, failed-run counts)."""
        values = np.asarray(self.result.values[self.metric], dtype=float)
        failed = np.asarray(self.result.values["status"]) != 0
        if values.ndim == 1 or len(self.result.axes) == 2:  # one axis and seeds
            values, failed = values[:, None], failed[:, None]
        keep = tuple(range(2, values.ndim))
        masked = np.where(failed, np.nan, values)
        with np.errstate(invalid="ignore"):
            counts = np.sum(~failed, axis=keep)
            mean = np.where(counts > 0, np.nansum(masked, axis=keep) / counts, np.nan)
        names = list(self.result.axes)
        rows = list(self.result.axes[names[0]])
        cols = list(self.result.axes[names[1]]) if len(names) > 2 else [None]
        return rows, cols, mean, np.sum(failed, axis=keep)

    def flagged(self) -> np.ndarray:
        """Per cell of `summary()`, the successful runs whose `flag` is set (all
        zero without a flag)."""
        status = np.asarray(self.result.values["status"])
        marked = np.zeros(status.shape, dtype=bool)
        if self.flag is not None:
            marked = (np.asarray(self.result.values[self.flag]) != 0) & (status == 0)
        if marked.ndim == 1 or len(self.result.axes) == 2:
            marked = marked[:, None]
        return np.sum(marked, axis=tuple(range(2, marked.ndim)))

    def _title(self, text: str) -> str:
        return f"{text}; {self.context}" if self.context else text

    def table(self) -> str:
        rows, cols, mean, failed = self.summary()
        marked = self.flagged()
        names = list(self.result.axes)
        corner = f"{names[0]} \\ {names[1]}" if cols[0] is not None else names[0]
        lines = [
            {"axis": r, "index": i, **{f"column {j}": m for j, m in enumerate(mean[i])}}
            for i, r in enumerate(rows)
        ]
        columns = [Column("axis", corner, ".3g")] + [
            Column(
                _marked_cell(j, marked[:, j]),
                "" if c is None else format(c, ".3g"),
                ".3e",
                missing="failed",
            )
            for j, c in enumerate(cols)
        ]
        total, size = int(np.sum(failed)), int(np.prod(self.result.shape))
        notes = [f"{size - total} of {size} runs succeeded (status 0); {total} failed"]
        if self.flag is not None:
            notes.append(
                f"{int(np.sum(marked))} of the {size - total} successful runs have "
                f"`{self.flag}` (†k: k such runs in the cell): {self.flag_meaning}"
            )
        return render_table(
            lines,
            columns,
            title=self._title(f"mean {self.metric} over successful runs"),
            notes=notes,
        )

    def figure(self):
        """Heat map of the mean metric over the first two axes (a curve for one
        axis); cells with failed runs are marked with their count."""
        seeds = len(self.result.axes["seed"])
        marks = "×k = k failed runs" + (
            f", †k = k with `{self.flag}`" if self.flag is not None else ""
        )
        title = f"{self.experiment}: {self.metric}, mean over {seeds} seed(s)"
        lines = [title, self.context, marks] if self.context else [title, marks]
        panel = Panel(title="\n".join(lines), draw=self._draw)
        return render_figure([panel], {}, panel_size=(7.0, 5.0))

    def _draw(self, ax, data) -> None:
        rows, cols, mean, failed = self.summary()
        names = list(self.result.axes)
        finite = mean[np.isfinite(mean)]
        positive = finite.size and np.all(finite > 0)
        if cols[0] is None:
            ax.plot(rows, mean[:, 0], "o-")
            ax.set(xlabel=names[0], ylabel=self.metric)
            if _log_spaced(rows):
                ax.set_xscale("log")
            if positive:
                ax.set_yscale("log")
            return
        from matplotlib.colors import LogNorm

        spread = positive and finite.max() > finite.min()
        norm = LogNorm(finite.min(), finite.max()) if spread else None
        image = ax.imshow(mean, origin="lower", aspect="auto", norm=norm)
        ax.figure.colorbar(image, ax=ax, label=f"mean {self.metric}")
        ax.set_xticks(range(len(cols)), [f"{c:.3g}" for c in cols], rotation=45)
        ax.set_yticks(range(len(rows)), [f"{r:.3g}" for r in rows])
        ax.set(xlabel=names[1], ylabel=names[0])
        marked = self.flagged()
        for i, j in zip(*np.nonzero(failed + marked)):
            text = [f"×{failed[i, j]}"] * bool(failed[i, j])
            text += [f"†{marked[i, j]}"] * bool(marked[i, j])
            ax.text(j, i, " ".join(text), ha="center", va="center", color="r")


def _marked_cell(j: int, marked: np.ndarray):
    """Column `j` of the summary table: the mean, followed by †k where k of the
    cell's successful runs carry the flag (unmarked cells padded to line up)."""
    if not marked.any():
        return f"column {j}"
    width = max(len(f" †{k}") for k in marked)

    def cell(line):
        value, k = line[f"column {j}"], marked[line["index"]]
        if not np.isfinite(value):
            return value
        return f"{value:.3e}" + (f" †{k}" if k else "").ljust(width)

    return cell


def _log_spaced(values) -> bool:
    v = np.asarray(values, dtype=float)
    if v.size < 3 or np.any(v <= 0):
        return False
    steps = np.diff(np.log(v))
    return bool(np.allclose(steps, steps[0], rtol=1e-6))


def _sweepable(name):
    experiment = _registry.get(name)
    if experiment.sweep is None:
        sweepable = [e for e, x in _registry.EXPERIMENTS.items() if x.sweep]
        raise SettingError(
            f"experiment `{name}` cannot be swept; sweepable: {', '.join(sweepable)}"
        )
    return experiment


def _check_grid(experiment, grid: dict, settings: Mapping) -> dict:
    if not grid:
        raise SettingError(
            f"give at least one --grid axis; sweepable for {experiment.name}: "
            + ", ".join(experiment.sweep.axes)
        )
    known = {s.name: s for s in experiment.settings}
    checked = {}
    for axis, values in grid.items():
        if axis not in experiment.sweep.axes:
            raise SettingError(
                f"`--grid` axis `{axis}` cannot be swept in {experiment.name}; "
                f"sweepable: {', '.join(experiment.sweep.axes)}"
            )
        values = np.atleast_1d(np.asarray(values, dtype=float))
        if values.ndim != 1 or values.size == 0:
            raise SettingError(f"`--grid` axis `{axis}` must be a non-empty list")
        for value in values:
            if axis in known:
                known[axis].check(float(value))
            elif not (np.isfinite(value) and value > 0):
                raise SettingError(f"`--grid` axis `{axis}` must be > 0, got {value:g}")
        checked[axis] = values
    return checked


def _point_function(experiment, settings):
    point = experiment.sweep.point

    def fn(seed, **axes):
        return point(settings, key=jax.random.key(seed), **axes)

    return fn


def run_sweep(
    name: str,
    *,
    grid: dict,
    seeds: int = 1,
    quick: bool = False,
    dtype: str = "float64",
    overrides: dict | None = None,
    out=None,
    force: bool = False,
    chunk_size: int = 64,
    progress: bool = True,
) -> SweepRun:
    """Sweep experiment `name` over `grid` × seeds 0…seeds−1, writing a run folder.

    The folder holds `settings.json` (everything needed to resume), `chunks/`
    (one atomic npz per finished chunk), and at the end `sweep.npz` (labelled,
    `flowgap.sweeps.load_sweep`), `sweep.nc` (netCDF),
    `summary.json` and `figure.png`. Interrupted, it leaves `partial.npz`
    (unfinished runs NaN) and `status.json`; `resume_sweep(folder)` continues.
    """
    experiment = _sweepable(name)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SettingError(f"`--seeds` must be a positive integer, got {seeds!r}")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise SettingError(
            f"`--chunk-size` must be a positive integer, got {chunk_size!r}"
        )
    settings = _registry.settings_for(
        experiment, quick=quick, dtype=dtype, overrides=overrides
    )
    axes = _check_grid(experiment, grid, settings)
    experiment.sweep.settings_for(settings, axes)  # a grid it cannot run fails here
    folder = _registry.output_folder(f"sweep-{name}", out, force)
    devices = len(jax.devices())
    per_chunk = math.ceil(chunk_size / devices) * devices
    record = dict(
        kind="sweep",
        experiment=name,
        flowgap=version("flowgap"),
        dtype=dtype,
        quick=quick,
        settings=settings,
        # pairs, not a dict: JSON files are written with sorted keys
        grid=[[k, v.tolist()] for k, v in axes.items()],
        seeds=seeds,
        runs_per_chunk=per_chunk,
        # resolved now, so a resumed sweep runs the same program
        batch_size=default_batch_size(),
        devices=devices,
    )
    write_json(folder / "settings.json", record)
    return _execute(experiment, record, folder, progress)


def resume_sweep(folder, *, progress: bool = True) -> SweepRun:
    """Continue the sweep in `folder` (finished chunks are loaded, not rerun), so
    the final result is bitwise that of an uninterrupted run on the same machine."""
    folder = pathlib.Path(folder)
    path = folder / "settings.json"
    if not path.is_file():
        raise SettingError(f"`--resume` {folder}: no settings.json; not a sweep folder")
    record = json.loads(path.read_text())
    if record.get("kind") != "sweep":
        raise SettingError(f"`--resume` {folder} holds a run, not a sweep")
    experiment = _sweepable(record["experiment"])
    devices = len(jax.devices())
    if record["runs_per_chunk"] % devices:
        raise SettingError(
            f"`--resume` {folder}: its chunks of {record['runs_per_chunk']} runs "
            f"cannot be split over this machine's {devices} devices"
        )
    _registry.set_precision(record["dtype"])
    record["settings"] = resolve(
        experiment.settings,
        {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in record["settings"].items()
        },
    )
    return _execute(experiment, record, folder, progress)


def _execute(experiment, record, folder: pathlib.Path, progress) -> SweepRun:
    grid = {k: np.asarray(v, dtype=float) for k, v in record["grid"]}
    sweepable = experiment.sweep
    settings = sweepable.settings_for(record["settings"], grid)
    grid["seed"] = np.arange(record["seeds"])
    fn = _point_function(experiment, settings)
    try:
        result = sweep(
            fn,
            grid,
            chunk_size=record["runs_per_chunk"],
            # folders written before batch_size existed ran one vmap per chunk
            batch_size=record.get("batch_size", "all"),
            checkpoint=folder / CHUNKS,
            progress=progress,
        )
    except SweepInterrupted as stop:
        stop.partial.save(folder / "partial.npz")
        write_json(
            folder / "status.json",
            dict(state="interrupted", chunks_done=stop.done, chunks_total=stop.total),
        )
        raise
    run = SweepRun(
        experiment.name,
        sweepable.metric,
        result,
        folder,
        context=sweepable.describe(settings),
        flag=sweepable.flag,
        flag_meaning=sweepable.flag_meaning,
    )
    result.save(folder / "sweep.npz")
    write_netcdf(folder / "sweep.nc", result.to_xarray())
    rows, cols, mean, failed = run.summary()
    write_json(
        folder / "summary.json",
        dict(
            metric=run.metric,
            axes=list(result.axes)[:2],
            rows=[float(r) for r in rows],
            columns=[None if c is None else float(c) for c in cols],
            mean=[[None if np.isnan(m) else float(m) for m in row] for row in mean],
            failed=failed.astype(int).tolist(),
            context=run.context,
            flag=run.flag,
            flagged=run.flagged().astype(int).tolist(),
        ),
    )
    save_figure(folder / "figure.png", run.figure())
    (folder / "partial.npz").unlink(missing_ok=True)
    write_json(folder / "status.json", dict(state="complete"))
    return run
