import math

import numpy as np
from jax.scipy.special import betainc


def _student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > ½) of Student's t with `df` degrees of freedom, by
    bisection on its CDF 1 − ½·I_{df/(df+t²)}(df/2, ½)."""

    def cdf(t):
        return 1.0 - 0.5 * float(betainc(df / 2, 0.5, df / (df + t * t)))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def loglog_slope(x, y, *, confidence: float = 0.95) -> dict:
    r"""Least-squares fit of log y = p·log x + c.

    **Returns:** a dict with `slope` p, `intercept` c, `stderr` (the standard error
    of p) and `ci` = (low, high), the two-sided `confidence` interval for p from
    Student's t with n − 2 degrees of freedom (NaN with fewer than three points).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("`x` and `y` must be 1-D arrays of the same length ≥ 2.")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("`x` and `y` must be positive and finite for a log–log fit.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    if x.size > 2:
        resid = ly - (slope * lx + intercept)
        s2 = resid @ resid / (x.size - 2)
        stderr = float(np.sqrt(s2 / np.sum((lx - lx.mean()) ** 2)))
        half = _student_t_quantile(0.5 + confidence / 2, x.size - 2) * stderr
    else:
        stderr = half = math.nan
    return dict(
        slope=float(slope),
        intercept=float(intercept),
        stderr=stderr,
        ci=(float(slope - half), float(slope + half)),
    )
