import numpy as np


def loglog_slope(x, y) -> dict:
    r"""Least-squares fit of log y = p·log x + c.

    **Returns:** a dict with `slope` p, `intercept` c and `stderr`, the standard
    error of p (NaN with fewer than three points).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("`x` and `y` must be 1-D arrays of the same length ≥ 2.")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("`x` and `y` must be positive and finite for a log–log fit.")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    if x.size > 2:
        resid = ly - (slope * lx + intercept)
        s2 = resid @ resid / (x.size - 2)
        stderr = float(np.sqrt(s2 / np.sum((lx - lx.mean()) ** 2)))
    else:
        stderr = float("nan")
    return dict(slope=float(slope), intercept=float(intercept), stderr=stderr)
