"""Figures rendered from panel specs, shared by every experiment.

Figures are built on `matplotlib.figure.Figure` directly, without pyplot, so
library code never picks a backend or keeps figures alive in a global registry:
the CLI chooses the backend, and Jupyter displays a returned `Figure` inline.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

PANEL_SIZE = (5.0, 4.2)


@dataclasses.dataclass(frozen=True)
class Series:
    """One line or set of markers of a panel.

    - `y`, `x`: keys into the figure data (`x=None` plots against the index);
    - `style`: a matplotlib format string (`"o"`, `"--"`, `"s-"`);
    - `label`: the legend entry (none when empty);
    - `skip`: how many leading points to leave out (e.g. a zero gap at t = 0);
    - `options`: further `Axes.plot` keywords (colour, alpha, linewidth, ...).

    A series whose key is absent from the data raises a `KeyError` naming it.
    """

    y: str
    x: str | None = None
    style: str = "-"
    label: str = ""
    skip: int = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Line:
    """A horizontal (`axis="y"`) or vertical (`axis="x"`) reference line."""

    value: float | int
    axis: str = "y"
    label: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Panel:
    """One axes of a figure: its series, reference lines, labels and scales.

    `draw(ax, data)` is an optional escape hatch for content that is not a line
    plot (a heat map, annotations); it runs after the series. `legend_size`
    0 hides the legend.
    """

    title: str = ""
    series: Sequence[Series] = ()
    lines: Sequence[Line] = ()
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"
    draw: Callable | None = None
    legend_size: float | int = 8.0
    legend_columns: int = 1


def render_figure(
    panels: Sequence[Panel],
    data: Mapping[str, Any],
    *,
    columns: int | None = None,
    title: str | None = None,
    panel_size: tuple[float | int, float | int] = PANEL_SIZE,
):
    """A `matplotlib.figure.Figure` with one axes per panel, `columns` per row
    (default: all in one row), drawn from `data` (name → array)."""
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("`panels` must hold at least one panel")
    columns = min(columns or len(panels), len(panels))
    rows = -(-len(panels) // columns)
    # Constrained layout leaves room for the suptitle and colour bars, which
    # tight_layout does not: with it the suptitle overlapped the top row's titles.
    figure = Figure(
        figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained"
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, data)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def draw_panel(ax, panel: Panel, data: Mapping[str, Any]) -> None:
    """Draw one panel's series, reference lines and extra content on `ax`."""
    for series in panel.series:
        y = _lookup(data, series.y)[series.skip :]
        if series.x is None:
            x = np.arange(series.skip, series.skip + len(y))
        else:
            x = _lookup(data, series.x)[series.skip :]
        ax.plot(x, y, series.style, label=series.label or None, **series.options)
    for line in panel.lines:
        method = ax.axhline if line.axis == "y" else ax.axvline
        method(line.value, label=line.label or None, **{"ls": ":", **line.options})
    ax.set(xscale=panel.xscale, yscale=panel.yscale)
    ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
    if panel.draw is not None:
        panel.draw(ax, data)
    if panel.legend_size and ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=panel.legend_size, ncol=panel.legend_columns)


def _lookup(data: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in data:
        raise KeyError(f"figure data has no series `{key}`")
    return np.asarray(data[key])


def shades(colormap: str, count: int, low: float | int = 0.35, high: float | int = 1.0):
    """`count` colours from light to dark along a matplotlib colormap."""
    from matplotlib import colormaps

    cmap = colormaps[colormap]
    return [cmap(v) for v in np.linspace(low, high, count)]
