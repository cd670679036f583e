"""Checking and defaulting the Diffrax objects `gradient_flow` takes."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete, positive_scalar
from .._precision import default_tolerances, warn_if_unattainable
from ..models import non_smooth

# One of Diffrax's suggestions for mildly stiff problems: long gradient flows are
# stability-limited (the step hovers near 2/λ_max for an explicit solver), where
# plain I-control (pcoeff 0, icoeff 1) rejects many steps (23% against 5% on the
# plateau problem of benchmarks/bench_core.py).
DEFAULT_PCOEFF = 0.3
DEFAULT_ICOEFF = 0.3
# A model with kinks (`flowgap.models.non_smooth`): its flow slides along the
# surfaces where a unit's input changes sign, where an adaptive solver's step
# shrinks to the tolerance whatever its order. Heun (order 2, with Euler as its
# error estimate) at rtol 1e-3 reaches t1 in a few hundred steps with a relative
# parameter error of a few 1e-4 (benchmarks/bench_relu.py; docs: non-smooth).
NON_SMOOTH_RTOL = 1e-3
NON_SMOOTH_ATOL = 1e-5


def non_smooth_defaults(model, solver, stepsize_controller, rtol, atol):
    """(solver, rtol, atol) with the defaults for `model`: for a model with kinks
    (`flowgap.models.non_smooth(model)` non-empty), `diffrax.Heun()` and, with no
    `stepsize_controller`, rtol 1e-3 and atol 1e-5, each only where the caller gave
    none; any other model's arguments are returned as they are."""
    if not non_smooth(model):
        return solver, rtol, atol
    solver = diffrax.Heun() if solver is None else solver
    if stepsize_controller is None:
        rtol = NON_SMOOTH_RTOL if rtol is None else rtol
        atol = NON_SMOOTH_ATOL if atol is None else atol
    return solver, rtol, atol


def check_solver(solver):
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver, got {type(solver).__name__}."
        )
    return solver


def check_controller(stepsize_controller, rtol, atol, dt0, dtype):
    """The step-size controller: `stepsize_controller` as given, or the default
    `PIDController(rtol, atol, pcoeff=0.3, icoeff=0.3)`. Tolerances are cast to
    the parameters' dtype, so a float32 model under x64 does not mix float64 into
    the controller's state. The defaults scale with the dtype's ε
    (`default_tolerances`); a requested rtol below what the dtype can meet gives
    a `PrecisionWarning`."""
    if stepsize_controller is None:
        default_rtol, default_atol = default_tolerances(dtype)
        rtol = default_rtol if rtol is None else rtol
        atol = default_atol if atol is None else atol
        warn_if_unattainable("rtol", rtol, dtype)
        return diffrax.PIDController(
            rtol=positive_scalar("rtol", rtol).astype(dtype),
            atol=positive_scalar("atol", atol).astype(dtype),
            pcoeff=DEFAULT_PCOEFF,
            icoeff=DEFAULT_ICOEFF,
        )
    if not isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
        raise TypeError(
            "`stepsize_controller` must be a diffrax step-size controller (e.g. "
            "diffrax.PIDController(rtol=..., atol=...)), got "
            f"{type(stepsize_controller).__name__}."
        )
    if rtol is not None or atol is not None:
        raise ValueError(
            "`rtol`/`atol` are shortcuts for the default PIDController; with "
            "`stepsize_controller` given, set the tolerances on it."
        )
    if isinstance(stepsize_controller, diffrax.ConstantStepSize) and dt0 is None:
        raise ValueError(
            "`stepsize_controller=diffrax.ConstantStepSize()` needs the step `dt0`."
        )
    if isinstance(stepsize_controller, diffrax.PIDController):
        warn_if_unattainable("rtol", stepsize_controller.rtol, dtype)
        stepsize_controller = eqx.tree_at(
            lambda c: (c.rtol, c.atol),
            stepsize_controller,
            (
                jnp.asarray(stepsize_controller.rtol, dtype),
                jnp.asarray(stepsize_controller.atol, dtype),
            ),
        )
    return stepsize_controller


def check_progress_meter(progress_meter):
    if progress_meter is None:
        return diffrax.NoProgressMeter()
    if not isinstance(progress_meter, diffrax.AbstractProgressMeter):
        raise TypeError(
            "`progress_meter` must be a diffrax progress meter such as "
            "diffrax.TqdmProgressMeter() or diffrax.TextProgressMeter(), got "
            f"{type(progress_meter).__name__}."
        )
    return progress_meter


def check_ts(ts, t1):
    """Save times: non-decreasing, from 0 to at most t1 (default: 0 and t1)."""
    if ts is None:
        return jnp.stack([jnp.zeros_like(t1), t1])
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"`ts` must be a non-empty 1-D array of times, got shape {ts.shape}."
        )
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(t1.dtype)
    if is_concrete(ts) and is_concrete(t1):
        arr = np.asarray(ts)
        if arr[0] != 0:
            raise ValueError(
                f"`ts` must start at 0 (the initial save), got ts[0] = {arr[0]}."
            )
        if np.any(np.diff(arr) < 0):
            raise ValueError("`ts` must be non-decreasing.")
        if arr[-1] > float(t1):
            raise ValueError(
                f"`ts` must lie in [0, t1 = {float(t1)}], got ts[-1] = {arr[-1]}."
            )
        return ts
    bad = (ts[0] != 0) | jnp.any(jnp.diff(ts) < 0) | (ts[-1] > t1)
    return eqx.error_if(
        ts, bad, "`ts` must be non-decreasing, start at 0 and end ≤ t1."
    )


_ADJOINTS = (
    diffrax.RecursiveCheckpointAdjoint,
    diffrax.BacksolveAdjoint,
    diffrax.ForwardMode,
    diffrax.DirectAdjoint,
)


def _in_forward_mode(tree) -> bool:
    """True when some leaf is being differentiated by `jax.jvp`/`jax.jacfwd`
    (a JVP tracer; reverse mode traces with linearize tracers instead)."""
    return any(
        isinstance(leaf, jax.interpreters.ad.JVPTracer)
        for leaf in jax.tree.leaves(tree)
    )


def choose_adjoint(adjoint, inputs, *, stop_when, dense):
    """The Diffrax adjoint (see `gradient_flow`): None picks `ForwardMode()` under
    forward-mode differentiation of `inputs`, else
    `RecursiveCheckpointAdjoint()`."""
    if adjoint is None:
        if _in_forward_mode(inputs):
            return diffrax.ForwardMode()
        return diffrax.RecursiveCheckpointAdjoint()
    if not isinstance(adjoint, _ADJOINTS):
        raise TypeError(
            "`adjoint` must be None or one of diffrax.RecursiveCheckpointAdjoint(), "
            "diffrax.BacksolveAdjoint(), diffrax.ForwardMode() or "
            f"diffrax.DirectAdjoint(); got {type(adjoint).__name__}."
        )
    if isinstance(adjoint, diffrax.BacksolveAdjoint) and (
        stop_when is not None or dense
    ):
        raise ValueError(
            "`adjoint=diffrax.BacksolveAdjoint()` supports neither `stop_when` "
            "(Diffrax events) nor `dense=True`; use the default "
            "RecursiveCheckpointAdjoint()."
        )
    return adjoint


def rk_evaluations(solver, num_steps):
    """Vector-field evaluations of an explicit Runge–Kutta solve: s per
    attempted step, or s − 1 plus one initial evaluation for FSAL tableaus
    (checked against a runtime counter in the tests). −1 for other solvers,
    whose count depends on their nonlinear solves."""
    if isinstance(solver, diffrax.Euler):
        return num_steps
    tableau = getattr(solver, "tableau", None)
    if not isinstance(tableau, diffrax.ButcherTableau) or tableau.implicit:
        return jnp.full_like(num_steps, -1)
    if tableau.fsal:
        return (tableau.num_stages - 1) * num_steps + 1
    return tableau.num_stages * num_steps
