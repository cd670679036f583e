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

  Only weights that regrow count: ż > 0, and still ż > 0 with the weight
  doubled (the law above keeps the sign of ż; a weight relaxing towards a
  fixed point near it, such as a radius settling at a saddle, reverses). At
  a saddle of the split depth-3 net (α = 0.01, ρ = 100) the one growing weight
  below 1 was the v-block radius at 0.886, relaxing at ż = 5.3e-10: counted,
  it gave an escape time of 2.1e8 while every off-support entry decayed.

A run is **stalled** where both exceed its horizon: the loss is not falling at
the rate that would bring it down in time, and no weight can regrow in time to
change that. (The settle time, not the e-folding time: a run that stops just
above `tol` on a slow tail needs a fraction of an e-fold, and is slow, not
stalled.) (The velocity of a weight below the floor w̃ = tiny^¼ is taken at
w̃, as `LogCoordinateField` does; at depth ≥ 3 that overstates its true rate,
so the escape time is, if anything, short: a run is never called stalled for
that reason. A growing weight whose law mixes w^{L−2} with a constant
non-negative part, as the sphere's tangent term gives the direction entries,
reaches 1 later than T: T is a lower bound there too.)
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._wn_robust_bias_log import log_floor


def efolding_time(loss, model, rates):
    r"""L/‖∇_wL‖²_P at `model` (`rates`: P, a pytree like the model)."""
    value, grad = jax.value_and_grad(loss)(model)
    speed = jax.tree.map(lambda g, p: jnp.sum(p * g**2), grad, rates)
    return value / sum(jax.tree.leaves(speed))


def escape_time(loss, log_size, sign, rates, depth: int):
    r"""The time the fastest-regrowing weight below 1 takes to reach 1 at its
    current law (the module's T), ∞ where no weight below 1 regrows.

    A weight counts if it grows (ż > 0) and still grows once doubled
    (`_pushed_rates`): a weight relaxing towards a fixed point nearby (a radius
    settling at a saddle) stops or reverses there and never reaches 1, while
    under ż ∝ w^{L−2} doubling leaves the sign of ż as it is.

    **Arguments:** `log_size`: the model with each weight w replaced by ln|w|
    (a flow's log-coordinate state holds exactly this, also where |w| is below
    float64's range); `sign`: the model with each weight replaced by its sign
    (±1); `rates`: P, a pytree like the model; `depth`: L ≥ 2 (static).
    """
    z, unravel = ravel_pytree(log_size)
    # A model's rates may be scalars per leaf (`PolarDiagonalNet.rates`).
    rates = jax.tree.map(lambda p, z: jnp.broadcast_to(p, z.shape), rates, log_size)
    signs, rate_of = ravel_pytree(sign)[0], ravel_pytree(rates)[0]

    def velocity(z):  # ż = −P(∂L/∂w)/w, each w taken at max(|w|, w̃)
        w = signs * jnp.exp(jnp.maximum(z, log_floor(z.dtype)))
        return -rate_of * ravel_pytree(jax.grad(loss)(unravel(w)))[0] / w

    rate = velocity(z)
    growing = (rate > 0) & (z < 0) & (z > -jnp.inf)  # 0 stays 0
    escaping = growing & (_pushed_rates(velocity, z) > 0)
    k = depth - 2
    to_one = -z if k == 0 else -jnp.expm1(k * z) / k  # (1 − w^k)/k, or ln(1/w)
    time = to_one / jnp.where(escaping, rate, 1.0)
    return jnp.min(jnp.where(escaping, time, jnp.inf))


#: How far `_pushed_rates` pushes each weight: ×2.
DOUBLING = float(np.log(2.0))


def _pushed_rates(velocity, z):
    """ż_i at z + `DOUBLING`·e_i, for each weight i alone (one gradient per
    weight, a few at a time: no Jacobian is formed). Run once per run, at its
    final point, on these nets of 2d + 2 weights at most."""

    def pushed(i):
        return velocity(z.at[i].add(DOUBLING))[i]

    return jax.lax.map(pushed, jnp.arange(z.size), batch_size=min(z.size, 16))


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
