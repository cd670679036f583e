"""Precision: warnings when a measurement is round-off, and the tolerances a
floating-point type can meet."""

import warnings

import jax
import numpy as np


class PrecisionWarning(UserWarning):
    """A measured difference is at the resolution of its floating-point type."""


# a difference within this many ulps of the quantity's own size is round-off
RESOLVED_ULPS = 10
_WARNED: set[str] = set()


def warn_if_unresolved(what: str, value, reference, dtype) -> None:
    r"""Warn once per kind of measurement (`what`) when, in a type coarser than
    float64, |value| ≤ 10·ε·|reference|: such a gap or drift is a few ulps of the
    quantity it is measured on, i.e. round-off rather than dynamics.

    With ε = 1.2e-7 (float32), a step–flow gap of 1e-6 on parameters of norm 1 is
    at the resolution limit; in float64 (ε = 2.2e-16), flowgap's default, it is
    resolved by nine orders of magnitude.
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) or dtype.itemsize >= 8:
        return
    if what in _WARNED:
        return
    eps = float(np.finfo(dtype).eps)
    limit = (
        RESOLVED_ULPS * eps * max(abs(float(reference)), float(np.finfo(dtype).tiny))
    )
    if abs(float(value)) <= limit:
        _WARNED.add(what)
        warnings.warn(
            f"{what} = {float(value):.3g} is below {dtype.name} resolution "
            f"({RESOLVED_ULPS} ulps of {float(reference):.3g} = {limit:.3g}): it is "
            "round-off, not dynamics. Run in float64 (flowgap's default; "
            "`jax.config.update('jax_enable_x64', True)` or `--dtype float64`).",
            PrecisionWarning,
            stacklevel=3,
        )


# An adaptive solver's error estimate is a difference of stage values, which
# carries a round-off of a few ulps of |y| per stage; a relative tolerance within
# 100 ulps of 1 is met, or missed, by round-off rather than by the step size, and
# the controller then shrinks the step without end (a float32 flow asked for
# rtol 1e-10 took 19,747 steps where float64 took 53).
TOLERANCE_ULPS = 100
# Below 10 ulps a tolerance cannot be met at all: `warn_if_unattainable`.
REACHABLE_ULPS = 10
# float64's default tolerances; the default absolute one keeps this ratio.
_DEFAULT_RTOL_64 = 1e-8
_ATOL_PER_RTOL = 1e-2


def tolerance_floor(dtype) -> float:
    """The smallest relative tolerance `dtype` can meet: 100·ε (2.2e-14 in
    float64, 1.2e-5 in float32)."""
    return TOLERANCE_ULPS * float(np.finfo(np.dtype(dtype)).eps)


def attainable(tol, dtype) -> float:
    """`tol`, raised to `tolerance_floor(dtype)` when below it: a float64
    experiment's tolerance, kept where the dtype can meet it."""
    return max(float(tol), tolerance_floor(dtype))


def default_tolerances(dtype) -> tuple[float, float]:
    """(rtol, atol) of the default step-size controller for parameters of
    `dtype`: (1e-8, 1e-10) in float64; in a coarser type, rtol is raised to
    `tolerance_floor` (1.2e-5 in float32) and atol keeps the ratio 1e-2."""
    rtol = attainable(_DEFAULT_RTOL_64, dtype)
    return rtol, _ATOL_PER_RTOL * rtol


def warn_if_unattainable(name: str, tol, dtype) -> None:
    """Warn once per (argument, dtype) when a requested relative tolerance is
    below 10·ε of `dtype` (1.2e-6 in float32): the solver's error estimate is
    then round-off, and the step shrinks without gaining accuracy."""
    dtype = np.dtype(dtype)
    try:
        value = float(tol)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced: checked where it is concrete
    key = f"{name}:{dtype.name}"
    reachable = REACHABLE_ULPS * float(np.finfo(dtype).eps)
    if value >= reachable or key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"`{name}` = {value:.3g} is below what {dtype.name} can reach "
        f"({REACHABLE_ULPS} ulps = {reachable:.3g}): the solver's error estimate "
        "is round-off there, and the step shrinks without gaining accuracy. Use "
        f"`{name}` ≥ {tolerance_floor(dtype):.3g} (flowgap's {dtype.name} "
        "default), or float64.",
        PrecisionWarning,
        stacklevel=4,
    )


def spacing_rtol(dtype) -> float:
    """Relative tolerance for checking that saved times sit on a clock t = k·η:
    t is a sum of k steps of η, so each is off by a few ulps of t; 1e-9 in
    float64 as before, 1e3·ε otherwise (1.2e-4 in float32)."""
    return max(1e-9, 1e3 * float(np.finfo(np.dtype(dtype)).eps))


def attainable_tolerances(rtol, atol, dtype) -> tuple[float, float]:
    """(rtol, atol) raised together where `dtype` cannot meet rtol: rtol to
    `tolerance_floor(dtype)`, atol by the same factor (their ratio sets which
    components count as small). Unchanged in float64 for rtol ≥ 2.2e-14."""
    raised = attainable(rtol, dtype)
    return raised, float(atol) * raised / float(rtol)


def params_dtype(model) -> np.dtype:
    """The floating dtype of `model`'s arrays (JAX's default float if none)."""
    leaves = [
        leaf
        for leaf in jax.tree.leaves(model)
        if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)
    ]
    return np.dtype(jax.numpy.result_type(*leaves) if leaves else float)


def attainable_loss(tol, dtype) -> float:
    """A squared-error loss threshold `tol`, raised to `tolerance_floor(dtype)²`:
    residuals of order-one targets are resolved to about 100·ε, so their mean
    square to its square (4.9e-28 in float64, 1.4e-10 in float32)."""
    return max(float(tol), tolerance_floor(dtype) ** 2)
