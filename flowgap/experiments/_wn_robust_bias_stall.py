r"""wn-robust-bias: whether a run that spent its budget has stalled for good.

A run that used its budget above the loss threshold has either stalled at a
stationary point (a saddle: the least-squares fit on a support,
`_wn_robust_bias_support`) or is still moving slowly. Two times tell which,
each at the run's final point, with P the rates (1 on a radius, ρ on a
direction) and the flow's own velocity:

- the **settle time** (L/‖∇_wL‖²_P)·ln(L/tol): the time the flow, lowering
  L at its current relative speed (L̇/L = −‖∇_wL‖²_P/L, whose inverse is the
  e-folding time), would take to reach the threshold `tol`;
- the **escape time**: the time the fastest-regrowing weight would take to
  reach 1. A weight w > 0 of a depth-L diagonal net (plain or polar) moves as
  ẇ = −P ∂L/∂w ∝ w^{L−1}, i.e. its log z = ln w at the rate ż = −P(∂L/∂w)/w ∝
  w^{L−2}; held at that law, it reaches 1 after

  $$T = \frac{1 - w^{L-2}}{(L-2)\,\dot z}\quad(L \ge 3),\qquad
    T = \frac{\ln(1/w)}{\dot z}\quad(L = 2).$$

  At depth 3 this is a finite-time blow-up: a weight can leave a plateau whose
  e-folding time is 1e14 within a few thousand time units (measured on the
  stacked depth-3 net, α = 1e-3, ρ = 10: Tsit5 spends its steps on the plateau
  at t = 2.27e4 with L/‖∇L‖²_P = 5e14, and the flow converges by t = 2.48e4).
  So the e-folding time alone does not show that a run is stuck.

A run is **stalled** where both exceed its horizon: the loss is not falling at
the rate that would bring it down in time, and no weight can regrow in time to
change that. (The settle time, not the e-folding time: a run that stops just
above `tol` on a slow tail needs a fraction of an e-fold, and is slow, not
stalled.) (The velocity of a weight below the floor w̃ = tiny^¼ is taken at
w̃, as `LogCoordinateField` does; at depth ≥ 3 that overstates its true rate,
so the escape time is, if anything, short: a run is never called stalled for
that reason.)
"""

import jax
import jax.numpy as jnp
import numpy as np

from ._wn_robust_bias_log import log_floor


def efolding_time(loss, model, rates):
    r"""L/‖∇_wL‖²_P at `model` (`rates`: P, a pytree like the model)."""
    value, grad = jax.value_and_grad(loss)(model)
    speed = jax.tree.map(lambda g, p: jnp.sum(p * g**2), grad, rates)
    return value / sum(jax.tree.leaves(speed))


def escape_time(loss, log_size, sign, rates, depth: int):
    r"""The time the fastest-regrowing weight below 1 takes to reach 1 at its
    current law (the module's T), ∞ where no weight below 1 grows.

    **Arguments:** `log_size`: the model with each weight w replaced by ln|w|
    (a flow's log-coordinate state holds exactly this, also where |w| is below
    float64's range); `sign`: the model with each weight replaced by its sign
    (±1); `rates`: P, a pytree like the model; `depth`: L ≥ 2 (static).
    """
    floor = log_floor(jax.tree.leaves(log_size)[0].dtype)
    at_floor = jax.tree.map(
        lambda z, s: s * jnp.exp(jnp.maximum(z, floor)), log_size, sign
    )
    grad = jax.grad(loss)(at_floor)
    k = depth - 2

    def fastest(z, w, g, p):
        rate = -p * g / w  # ż of the weight, at max(|w|, w̃)
        to_one = -z if k == 0 else -jnp.expm1(k * z) / k  # (1 − w^k)/k
        growing = (rate > 0) & (z < 0) & (z > -jnp.inf)  # 0 stays 0
        time = to_one / jnp.where(growing, rate, 1.0)
        return jnp.min(jnp.where(growing, time, jnp.inf))

    times = jax.tree.map(fastest, log_size, at_floor, grad, rates)
    return jnp.min(jnp.stack(jax.tree.leaves(times)))


def signed_log(model):
    """(`log_size`, `sign`) of `model`'s weights, for `escape_time`: ln|w|
    (−∞ at 0: a zero weight stays zero) and sign(w) (+1 at 0)."""
    log_size = jax.tree.map(lambda w: jnp.log(jnp.abs(w)), model)
    sign = jax.tree.map(lambda w: jnp.where(w < 0, -1.0, 1.0).astype(w.dtype), model)
    return log_size, sign


def settle_time(efolding, loss, tol):
    """(L/‖∇L‖²_P)·ln(L/`tol`) from the e-folding time (negative below `tol`)."""
    return efolding * jnp.log(loss / tol)


def stalled(settle, escape, horizon):
    """Whether a run's settle and escape times both exceed `horizon` (NumPy
    arrays or floats; NaN compares as not stalled)."""
    return np.greater(settle, horizon) & np.greater(escape, horizon)
