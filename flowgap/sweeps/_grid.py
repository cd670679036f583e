import numpy as np


def check_grid(grid) -> dict:
    """{axis name: 1-D float/int numpy array}, in the given order; every axis named
    by a string and non-empty."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError("`grid` must be a non-empty dict {axis name: values}.")
    axes = {}
    for name, values in grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"`grid` axis names must be identifiers, got {name!r}.")
        values = np.asarray(values)
        if values.ndim == 0:
            values = values[None]
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"`grid` axis `{name}` must be a non-empty 1-D sequence.")
        if not (np.issubdtype(values.dtype, np.number)):
            raise ValueError(
                f"`grid` axis `{name}` must hold numbers, got {values.dtype}."
            )
        axes[name] = values
    return axes


def flat_points(axes: dict) -> dict:
    """The cartesian product of the axes, flattened in C order: {name: (N,)}."""
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    return {name: m.ravel() for name, m in zip(axes, mesh)}
