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


def loglog_slope(x, y, *, confidence: float = 0.95, correction: bool = False) -> dict:
    r"""Least-squares fit of log y = p·log x + c, or, with `correction`, of
    log y = p·log x + c + d·x.

    A gap with an asymptotic order, y = C xᵖ(1 + D x + O(x²)), has log y =
    p log x + log C + D x + O(x²). The straight fit reads the curvature D x as
    slope: on a ladder of small x its interval is narrow and misses p by O(x)
    (e.g. [2.9956, 2.9999] for a true 3). The `correction` term models that
    leading correction, so the interval is centred on p up to O(x²); it costs a
    degree of freedom (four points or more give an interval).

    **Returns:** a dict with `slope` p, `intercept` c, `stderr` (the standard error
    of p), `ci` = (low, high), the two-sided `confidence` interval for p from
    Student's t with n − 2 (n − 3 with `correction`) degrees of freedom (NaN with
    no degree of freedom left), and `correction` d (0 without).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("`x` and `y` must be 1-D arrays of the same length ≥ 2.")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("`x` and `y` must be positive and finite for a log–log fit.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    if correction and x.size < 3:
        raise ValueError("a fit with `correction` needs three points or more.")
    lx, ly = np.log(x), np.log(y)
    if correction:
        design = np.stack([lx, np.ones_like(lx), x], axis=1)
        coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
        resid = ly - design @ coef
        spread = 1 / np.linalg.inv(design.T @ design)[0, 0]
    else:  # the straight line, as np.polyfit computes it
        coef = np.polyfit(lx, ly, 1)
        resid = ly - (coef[0] * lx + coef[1])
        spread = np.sum((lx - lx.mean()) ** 2)
    dof = x.size - (3 if correction else 2)
    if dof > 0:
        stderr = float(np.sqrt(resid @ resid / dof / spread))
        half = _student_t_quantile(0.5 + confidence / 2, dof) * stderr
    else:
        stderr = half = math.nan
    slope = float(coef[0])
    return dict(
        slope=slope,
        intercept=float(coef[1]),
        stderr=stderr,
        ci=(float(slope - half), float(slope + half)),
        correction=float(coef[2]) if correction else 0.0,
    )
