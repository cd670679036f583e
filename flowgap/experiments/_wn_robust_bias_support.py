r"""wn-robust-bias: which saddle a stalled run sits at, checked.

A diagonal net of depth L (plain or polar) computes β coordinate by coordinate
from its weights, each β_i a degree-L monomial of them, so the loss
L(β) = ‖Xβ − y‖²/2n has ∂L/∂u_i ∝ u_i^{L−1}·g_i with g = Xᵀ(Xβ − y)/n. Its
stationary points with L > 0 and the off-support weights at zero are therefore
the least-squares fits on a support S: β_S = argmin ‖X_S b − y‖², β off S = 0.
Such a point is a saddle (a coordinate off S with g_i ≠ 0 lowers L), but a
slow one to leave: a weight w_i at a tiny value regrows as ẇ ∝ w^{L−1}g_i, in a
time ∝ ln(1/w_i)/|g_i| at depth 2 and ∝ 1/(|g_i| w_i^{L−2}) at depth L ≥ 3,
beyond any horizon once w_i has decayed to round-off. The polar flow at a large
rate ratio ρ reaches such points: its direction concentrates on the few
coordinates most correlated with y before the radius has grown enough to fit
the rest (docs: studies/wn-robust-bias).

`support_fit` checks that claim on a run that stalled: its support S (the
coordinates with |β_i| > `SUPPORT_CUT`·max|β|) and the relative gap
|L − L_S|/L between its loss and the least-squares loss on S. A gap at
round-off identifies the saddle; an O(1) gap says the run stalled elsewhere.
"""

import numpy as np

#: A coordinate with |β_i| ≤ SUPPORT_CUT·max|β| is off the support. At a point
#: with a residual it changes L to first order, by about g_i·β_i: about this
#: fraction of L, three decades inside `STATIONARY_RTOL`, so a point that fits
#: its support passes the check whatever such coordinates hold, and one with a
#: coordinate that matters above the cut fails it. (The stalled runs' off-support
#: coordinates are at 1e-13 of the largest or far below.)
SUPPORT_CUT = 1e-9

#: |L − L_S|/L at or below this identifies the least-squares fit on S. Measured
#: on the default grid (`flowgap run wn-robust-bias`): the stalled runs at such
#: a fit have gaps of 2e-16 to 2e-9 (L's round-off, and off-support coordinates
#: near the cut), the stalled runs that are not (slow, on a dense support) have
#: 3e-3 to 1; the threshold sits between, 2.5 decades from either.
STATIONARY_RTOL = 1e-6


def support_fit(inputs, targets, beta) -> tuple[int, float]:
    """The support size k = |S| of `beta` (S: |β_i| > `SUPPORT_CUT`·max|β|) and
    the least-squares loss on it, min_b ‖X_S b − y‖²/2n (in float64, by NumPy's
    `lstsq`; L(0) = ‖y‖²/2n for an empty support)."""
    x, y, b = (np.asarray(a, np.float64) for a in (inputs, targets, beta))
    size = np.abs(b)
    support = np.flatnonzero(size > SUPPORT_CUT * size.max()) if size.max() > 0 else []
    if len(support) == 0:
        return 0, float(y @ y / (2 * len(y)))
    coef, *_ = np.linalg.lstsq(x[:, support], y, rcond=None)
    residual = x[:, support] @ coef - y
    return len(support), float(residual @ residual / (2 * len(y)))


def support_grid(problem, values) -> dict:
    """`support_fit` at every grid point of `grid_run`'s `values`: `support`
    (k) and `support_gap` (|L − L_S|/L, NaN where L = 0), arrays of the grid's
    shape."""
    beta = np.asarray(values["beta"])
    loss = np.asarray(values["final_loss"], np.float64)
    shape = loss.shape
    support, gap = np.zeros(shape, np.int64), np.full(shape, np.nan)
    for index in np.ndindex(shape):
        k, fit = support_fit(problem.inputs, problem.targets, beta[index])
        support[index] = k
        if loss[index] > 0:
            gap[index] = abs(loss[index] - fit) / loss[index]
    return dict(support=support, support_gap=gap)


def at_saddle(gap) -> bool:
    """Whether a relative gap |L − L_S|/L identifies the least-squares fit on
    the run's support."""
    return bool(gap is not None and gap <= STATIONARY_RTOL)
