"""wn-robust-bias's stall test (docs: studies/wn-robust-bias): the escape time
is the exact time a weight under ẇ = c w^{L−1} takes to reach 1, including
weights far below float64's range, and a run is stalled only where both the
e-folding and the escape time exceed its horizon."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap.experiments import _wn_robust_bias as wn
from flowgap.experiments._settings import resolve
from flowgap.experiments._wn_robust_bias_stall import (
    efolding_time,
    escape_time,
    settle_time,
    signed_log,
    stalled,
)


def _power_loss(c, depth):
    """L(w) = −Σ cᵢ wᵢ^L / L, whose flow is ẇᵢ = cᵢ wᵢ^{L−1} (rates 1)."""
    return lambda w: -jnp.sum(c * w["w"] ** depth) / depth


def _exact(w, c, depth):
    """∫_w^1 dw/(c w^{L−1}): ln(1/w)/c at depth 2, (w^{2−L} − 1)/((L−2)c) above."""
    if depth == 2:
        return np.log(1 / w) / c
    return (w ** (2.0 - depth) - 1) / ((depth - 2) * c)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_escape_time_is_the_closed_form(depth):
    """The fastest of three growing weights below 1 sets the time (rtol 1e-13:
    a few float64 roundings of a log, a power and a division); decaying
    weights (c < 0) and weights above 1 do not count."""
    w = np.array([1e-3, 0.2, 0.05, 0.3, 2.0])
    c = np.array([0.5, 0.01, 3.0, -4.0, 9.0])
    rates = {"w": jnp.asarray([1.0, 2.0, 0.5, 1.0, 1.0])}
    log_size, sign = signed_log({"w": jnp.asarray(w)})
    got = escape_time(_power_loss(jnp.asarray(c), depth), log_size, sign, rates, depth)
    p = np.asarray(rates["w"])
    want = min(_exact(w[i], c[i] * p[i], depth) for i in range(3))
    np.testing.assert_allclose(float(got), want, rtol=1e-13)


def test_escape_time_far_below_float64_range():
    """A weight at z = −1000 (e^{−1000} is 0 in float64): at depth 2 the time is
    the exact 1000/c, from the log kept by the state; at depth 3 it is taken at
    the floor w̃ = tiny^¼ (1.2e-77), short of the true e^{1000}/c but beyond
    any horizon (> 1e76)."""
    c = jnp.asarray([2.0])
    log_size, sign = {"w": jnp.asarray([-1000.0])}, {"w": jnp.ones(1)}
    rates = {"w": jnp.ones(1)}
    two = escape_time(_power_loss(c, 2), log_size, sign, rates, 2)
    np.testing.assert_allclose(float(two), 500.0, rtol=1e-13)
    three = escape_time(_power_loss(c, 3), log_size, sign, rates, 3)
    assert 1e76 < float(three) < np.inf


def test_no_growing_weight_never_escapes():
    """All weights decaying: ∞. A zero weight (ln 0 = −∞) stays zero: ∞."""
    loss = _power_loss(jnp.asarray([-1.0, 1.0]), 3)
    log_size, sign = signed_log({"w": jnp.asarray([0.1, 0.0])})
    rates = {"w": jnp.ones(2)}
    assert float(escape_time(loss, log_size, sign, rates, 3)) == np.inf


def test_a_weight_relaxing_to_a_fixed_point_does_not_escape():
    """w₀ = 0.4 under L = ½(w₀ − 0.5)² grows (ż = 0.25 > 0) but settles at 0.5
    and never reaches 1 (doubled, it shrinks): it does not count. Beside it,
    w₁ = 0.01 under ẇ = 3w² (depth 3) escapes at the closed form; alone, the
    relaxing weight gives ∞."""

    def loss(m):
        w = m["w"]
        return 0.5 * (w[0] - 0.5) ** 2 - 3.0 * w[1] ** 3 / 3

    log_size, sign = signed_log({"w": jnp.asarray([0.4, 0.01])})
    rates = {"w": jnp.ones(2)}
    got = escape_time(loss, log_size, sign, rates, 3)
    np.testing.assert_allclose(float(got), _exact(0.01, 3.0, 3), rtol=1e-13)
    alone = escape_time(
        lambda m: 0.5 * (m["w"][0] - 0.5) ** 2,
        *signed_log({"w": jnp.asarray([0.4])}),
        {"w": jnp.ones(1)},
        3,
    )
    assert float(alone) == np.inf


def test_negative_weights_grow_by_their_own_sign():
    """w = −0.1 under ẇ = c w² with c < 0 grows in size (|w|' = −c w²): the
    same time as w = 0.1 under −c."""
    log_size, sign = signed_log({"w": jnp.asarray([-0.1])})
    rates = {"w": jnp.ones(1)}
    got = escape_time(_power_loss(jnp.asarray([-2.0]), 3), log_size, sign, rates, 3)
    np.testing.assert_allclose(float(got), _exact(0.1, 2.0, 3), rtol=1e-13)


def test_efolding_settle_and_stalled():
    """L/‖∇L‖²_P on L = ½‖w‖² with rates P is ½‖w‖²/Σ pᵢwᵢ²; the settle time
    is that times ln(L/tol) (an exact flow at constant relative speed,
    L(t) = L₀e^{−t/τ}, reaches tol at τ ln(L₀/tol)); stalled needs both times
    beyond the horizon."""
    w = {"w": jnp.asarray([1.0, 2.0])}
    rates = {"w": jnp.asarray([3.0, 0.5])}
    got = efolding_time(lambda m: 0.5 * jnp.sum(m["w"] ** 2), w, rates)
    np.testing.assert_allclose(float(got), 2.5 / (3.0 + 2.0), rtol=1e-15)
    settle = settle_time(got, 2.5, 2.5e-10)
    np.testing.assert_allclose(float(settle), 0.5 * np.log(1e10), rtol=1e-15)
    horizon = 10.0
    assert stalled(11.0, 11.0, horizon)
    assert not stalled(11.0, 9.0, horizon) and not stalled(9.0, 11.0, horizon)
    assert not stalled(np.nan, 11.0, horizon)


@pytest.mark.slow
def test_plateau_before_a_depth_three_escape_is_not_stalled():
    """The case the escape time is for (default problem, stacked depth-3 net,
    α = 1e-3, ρ = 10): Tsit5 spends its 200,000 steps on a plateau whose
    settle time is beyond the horizon t1, so the e-folding time alone would
    call it stalled; its escape time is within t1, so it is not, and the
    Kvaerno5 re-solve escapes and converges (to L < tol, within t1)."""
    s = resolve(wn.SETTINGS, {})
    problem = wn._problem(jax.random.key(0), s)
    s, _ = wn.attainable(s, problem)
    options = dict(family="polar", method="gf", depth=3, settings=s)
    tsit5 = wn.train(problem, 1e-3, 10.0, **options)
    assert not bool(tsit5["converged"]) and not bool(tsit5["successful"])
    assert float(tsit5["settle_time"]) > s["t1"]
    assert float(tsit5["escape_time"]) < s["t1"]
    assert not stalled(tsit5["settle_time"], tsit5["escape_time"], s["t1"])
    implicit = wn.train(problem, 1e-3, 10.0, solver="kvaerno5", **options)
    assert bool(implicit["converged"]) and float(implicit["time"]) < s["t1"]
    assert float(implicit["final_loss"]) < s["tol"]
