"""Learning-rate ladders on one clock t = kη, shared by the experiments that run
gradient descent at several rates to one horizon: each rate's step count, and the
log–log fit of a measurement against the rate."""

import math
from collections.abc import Sequence

import numpy as np

from .. import analysis
from ._settings import SettingError


def ladder_steps(t1: float | int, lrs: Sequence[float], saves: int = 1) -> dict:
    """lr → its step count t1/lr, for every rate of the ladder.

    Raises a `SettingError` when t1 is not a whole number of steps of some `lr`,
    or when `saves` does not divide that number (so GD's saves fall on the
    flow's save times).
    """
    steps = {}
    for lr in lrs:
        count = t1 / lr
        if abs(count - round(count)) > 1e-9 * count or round(count) < 1:
            raise SettingError(
                f"setting `lrs`: t1 = {t1:g} is not a whole number of steps of "
                f"lr = {lr:g}"
            )
        if round(count) % saves:
            raise SettingError(
                f"setting `saves` ({saves}) must divide the {round(count)} steps of "
                f"lr = {lr:g}, so GD saves fall on the flow's save times"
            )
        steps[lr] = int(round(count))
    return steps


def fit_against_lr(lrs: Sequence[float], values: Sequence[float] | np.ndarray) -> dict:
    """The log–log fit of `values` against `lrs` (`analysis.loglog_slope`), or
    NaN slope, intercept and stderr when there are fewer than two values or one
    is not positive and finite."""
    if len(values) >= 2 and all(v > 0 and math.isfinite(v) for v in values):
        return analysis.loglog_slope(lrs, values)
    return dict(slope=math.nan, intercept=math.nan, stderr=math.nan)


def slope_text(fit: dict) -> str:
    """A fitted slope for a table's notes: `1.033 ± 0.012`; the slope alone when
    its standard error is undefined (two rates leave no degree of freedom), and
    "—" without a slope; never `± nan`."""
    slope, stderr = fit["slope"], fit["stderr"]
    if not math.isfinite(slope):
        return "— (needs two positive, finite values)"
    if not math.isfinite(stderr):
        return f"{slope:.3f} (two rates: no error bar)"
    return f"{slope:.3f} ± {stderr:.3f}"


def label_lrs(ax, data) -> None:
    """A `Panel.draw` for a log learning-rate axis: a labelled tick at each rate
    of the ladder (`data["lrs"]`) and unlabelled minor ticks, so a ladder under a
    decade wide still reads."""
    from matplotlib.ticker import NullFormatter

    lrs = np.asarray(data["lrs"])
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def tone(colormap: str, value: float):
    """The colour at `value` ∈ [0, 1] along a matplotlib colormap."""
    from matplotlib import colormaps

    return colormaps[colormap](value)
