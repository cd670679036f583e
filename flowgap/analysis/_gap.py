import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .. import dynamics
from .._checks import positive_scalar
from .._precision import attainable_tolerances, params_dtype, warn_if_unresolved
from ..dynamics._compare import check_same_parameters, trainable_part
from ._fit import loglog_slope

_NAMES = {0: "GF", 1: "order-1 modified flow", 2: "order-2 modified flow"}


def parameter_distance(a, b, *, trainable=None) -> float:
    """‖a − b‖₂ over the trainable arrays of two models: the floating-point arrays
    selected by `trainable` (a filter as in `eqx.partition`; default all of them).
    Functions, static fields and integer arrays are not parameters and are
    ignored; a `ValueError` names `a` and `b` when their trainable arrays differ
    in path or shape.

    In float32 (or coarser) a distance within 10 ulps of the parameters' own norm
    is round-off, and a `PrecisionWarning` says so (once)."""
    check_same_parameters(a, b, trainable=trainable)
    la = jax.tree.leaves(trainable_part(a, trainable))
    lb = jax.tree.leaves(trainable_part(b, trainable))
    distance = float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(la, lb))))
    size = float(jnp.sqrt(sum(jnp.sum(x**2) for x in la)))
    warn_if_unresolved("the step–flow gap", distance, size, jnp.result_type(*la))
    return distance


@dataclasses.dataclass(frozen=True)
class GapTable:
    """Result of `gap_exponent`: for each flow order, the gaps
    ‖θ_GD(T) − θ_flow(T)‖ over the learning-rate ladder and the fitted log–log
    slope with its confidence interval (expected slope: order + 1)."""

    lrs: np.ndarray
    gaps: dict
    fits: dict

    def table(self) -> str:
        lines = [f"{'against':<24} {'slope':>7} {'95% CI':>17} {'expected':>9}"]
        for order, fit in self.fits.items():
            low, high = fit["ci"]
            lines.append(
                f"{_NAMES[order]:<24} {fit['slope']:>7.3f} [{low:>6.3f}, {high:>6.3f}] "
                f"{order + 1:>9d}"
            )
        return "\n".join(lines)


def gap_exponent(
    loss,
    model,
    *,
    lrs,
    t1,
    orders=(0, 1, 2),
    rates=None,
    solver=None,
    rtol=None,
    atol=None,
    max_steps: int = 1_000_000,
    confidence: float = 0.95,
    correction: bool = False,
    trainable=None,
) -> GapTable:
    r"""Gap exponents of gradient descent against the gradient flow (order 0) and
    the order-1 and order-2 modified flows, at the fixed horizon T = `t1`.

    For each η in `lrs` (each must divide T), GD runs T/η steps and the gap
    ‖θ_GD(T) − θ_flow(T)‖ is measured; log gap is fitted against log η. Backward
    error analysis predicts slopes 1, 2, 3. The flows are solved at `rtol`/`atol`
    (default 1e-13 with Dopri8) so their error stays below the smallest gap; in
    a coarser dtype the default is raised to what it can meet (`rtol` = 100·ε,
    1.2e-5 in float32), so its gaps are resolved only above that.
    `trainable` (a filter as in `eqx.partition`) is passed to every run; the gap
    is measured on those arrays only.

    `correction=True` fits log gap = p log η + c + d η (`loglog_slope`): the gap
    is C ηᵖ(1 + D η + …), and a straight fit reads D η as slope, so on a fine
    ladder its narrow interval misses p by O(η). With the correction term and
    four or more rates the interval covers the order (docs: gap-toolkit.md).

    The whole table takes two compiled programs: GD at every rate is one
    (`dynamics.ladder_descent`), and every flow is one field whose η and order
    are traced (`dynamics.SeriesField`; the gradient flow is its η = 0 case).

    **Returns:** a `GapTable`.
    """
    lrs, t1 = _check_ladder(lrs, t1, orders)
    solver = diffrax.Dopri8() if solver is None else solver
    default = attainable_tolerances(1e-13, 1e-13, params_dtype(model))
    rtol = default[0] if rtol is None else rtol
    atol = default[1] if atol is None else atol
    ladder = dynamics.ladder_descent(
        loss, model, lrs.tolist(), t1, rates=rates, throw=True, trainable=trainable
    )
    gd = [ladder[lr].final for lr in lrs.tolist()]

    def flow_final(order, lr=0.0):
        return dynamics.gradient_flow(
            loss,
            model,
            t1=t1,
            field=dynamics.SeriesField.of_order(order, lr, rates),
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
            throw=True,
            trainable=trainable,
        ).final

    gaps = {}
    for order in orders:
        if order == 0:  # the gradient flow does not depend on η
            finals = [flow_final(0)] * len(lrs)
        else:
            finals = [flow_final(order, lr) for lr in lrs]
        gaps[order] = np.array(
            [parameter_distance(a, b, trainable=trainable) for a, b in zip(gd, finals)]
        )
    fits = {
        o: loglog_slope(lrs, g, confidence=confidence, correction=correction)
        for o, g in gaps.items()
    }
    return GapTable(lrs=lrs, gaps=gaps, fits=fits)


def _check_ladder(lrs, t1, orders) -> tuple[np.ndarray, float]:
    """(learning rates, horizon T), after checking that the ladder has two or
    more positive rates, each dividing T, and that every order has a flow."""
    lrs = np.asarray(lrs, dtype=float)
    if lrs.ndim != 1 or lrs.size < 2 or np.any(lrs <= 0):
        raise ValueError("`lrs` must list at least two positive learning rates.")
    t1 = float(positive_scalar("t1", t1))
    if not set(orders) <= {0, 1, 2}:
        raise ValueError(f"`orders` must be a subset of (0, 1, 2), got {orders}.")
    steps = t1 / lrs
    if np.any(np.abs(steps - np.round(steps)) > 1e-9 * steps):
        raise ValueError(f"every entry of `lrs` must divide t1 = {t1:g}.")
    return lrs, t1
