"""Warn when a measured gap or drift is round-off of the working precision."""

import warnings

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
