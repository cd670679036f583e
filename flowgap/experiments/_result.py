"""One result type for every experiment: rows, fits and curves, rendered into a
table and a figure by shared code from the experiment's column and panel specs,
and labelled as an `xarray.Dataset`."""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ._figure import Panel, render_figure
from ._output import json_text
from ._table import Column, render_table


@dataclasses.dataclass
class ExperimentResult:
    """What one experiment run produced.

    - `settings`: the resolved settings (a `Config`);
    - `rows`: one dict per reported run, the table's rows;
    - `fits`: the headline numbers computed from the rows (slopes, findings);
    - `curves`: name → array, the figure's data and `arrays.npz`.

    An experiment subclasses this and states its report as specs: `columns()`
    (and optionally `title()` / `notes()`) for `table()`; `panels()` (and
    optionally `figure_data()`, `figure_title()`, `FIGURE_COLUMNS`) for
    `figure()`. `dataset()` gives everything as one labelled `xarray.Dataset`.
    """

    settings: Mapping
    rows: list
    fits: dict
    curves: dict

    FIGURE_COLUMNS: ClassVar[int | None] = None
    PANEL_SIZE: ClassVar[tuple[float, float]] = (5.0, 4.2)

    # -- the specs an experiment states ------------------------------------------
    def columns(self) -> Sequence[Column]:
        raise NotImplementedError(f"{type(self).__name__} states no table columns")

    def title(self) -> str | None:
        return None

    def notes(self) -> Sequence[str]:
        return ()

    def panels(self) -> Sequence[Panel]:
        raise NotImplementedError(f"{type(self).__name__} states no figure panels")

    def figure_data(self) -> Mapping[str, Any]:
        """The arrays the panels refer to; by default `curves`."""
        return self.curves

    def figure_title(self) -> str | None:
        return None

    # -- rendered by shared code -------------------------------------------------
    def table(self) -> str:
        return render_table(
            self.rows, self.columns(), title=self.title(), notes=self.notes()
        )

    def figure(self):
        return render_figure(
            self.panels(),
            self.figure_data(),
            columns=self.FIGURE_COLUMNS,
            title=self.figure_title(),
            panel_size=self.PANEL_SIZE,
        )

    def dataset(self):
        """The result as an `xarray.Dataset`.

        Each row field is a variable along the dimension `row` (a pair such as a
        confidence interval adds a dimension `bound` of length 2; `None` is NaN);
        each curve `name` is a variable with dimensions `name:0`, `name:1`, ...;
        the settings and fits are JSON attributes.
        """
        import xarray as xr

        variables = {}
        for field in _fields(self.rows):
            variables[f"row:{field}"] = _row_variable(self.rows, field)
        for name, value in self.curves.items():
            array = np.asarray(value)
            dims = [f"{name}:{i}" for i in range(array.ndim)]
            variables[name] = xr.Variable(dims, array)
        attrs = dict(  # strict JSON: NaN and ±inf are null
            settings=json_text(dict(self.settings), indent=None),
            fits=json_text(self.fits, indent=None),
        )
        return xr.Dataset(variables, attrs=attrs)


def _fields(rows) -> list[str]:
    fields = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    return fields


def _row_variable(rows, field):
    import xarray as xr

    values = [row.get(field) for row in rows]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, tuple | list) and len(v) == 2 for v in present):
        pairs = [(math.nan, math.nan) if v is None else v for v in values]
        return xr.Variable(("row", "bound"), np.asarray(pairs, dtype=float))
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        return xr.Variable("row", np.asarray([bool(v) for v in values]))
    if present and all(_is_number(v) for v in present):
        numbers = [math.nan if v is None else float(v) for v in values]
        if all(isinstance(v, int | np.integer) for v in values):
            return xr.Variable("row", np.asarray(values, dtype=np.int64))
        return xr.Variable("row", np.asarray(numbers, dtype=float))
    return xr.Variable("row", np.asarray(["" if v is None else str(v) for v in values]))


def _is_number(value) -> bool:
    if isinstance(value, bool | str):
        return False
    return isinstance(value, int | float | np.number) or (
        hasattr(value, "__float__") and np.ndim(value) == 0
    )
