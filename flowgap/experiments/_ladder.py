"""Learning-rate ladders on one clock t = kη, shared by the experiments that run
gradient descent at several rates to one horizon (GD itself:
`dynamics.ladder_descent`): each rate's step count as a checked setting, the
log–log fit of a measurement against the rate, and the ladder's axis."""

import math
from collections.abc import Sequence

import numpy as np

from .. import analysis, dynamics
from ._settings import SettingError


def ladder_steps(t1: float | int, lrs: Sequence[float], saves: int = 1) -> dict:
    """lr → its step count t1/lr (`dynamics.ladder_steps`), a bad ladder raised as
    a `SettingError` naming the setting."""
    try:
        return dynamics.ladder_steps(t1, lrs, saves)
    except ValueError as error:
        raise SettingError(f"setting {error}") from None


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
    "—" without a slope; never `± nan`. A fit read back from `results.json`
    holds null (None) where it held NaN."""
    slope, stderr = (
        math.nan if v is None else v for v in (fit["slope"], fit["stderr"])
    )
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
