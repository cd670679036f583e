"""Numerical hygiene: float32 results at round-off level are flagged, and
learning rates beyond 2/sharpness are warned about when asked."""

import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import _precision, analysis, dynamics, invariants, models


@pytest.fixture(autouse=True)
def fresh_warning_state():
    _precision._WARNED.clear()
    yield
    _precision._WARNED.clear()


def _shift(model, relative):
    """`model` with every parameter scaled by 1 + `relative`."""
    return eqx.tree_at(
        lambda m: (m.u, m.v),
        model,
        (model.u * (1 + relative), model.v * (1 + relative)),
    )


def test_float32_gap_at_round_off_warns_once():
    net = models.DiagonalNet(4, scale=1.0, dtype=jnp.float32)
    close = _shift(net, 2 * float(jnp.finfo(jnp.float32).eps))
    with pytest.warns(flowgap.PrecisionWarning, match="float32 resolution"):
        analysis.parameter_distance(net, close)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis.parameter_distance(net, close)  # once per kind of measurement


def test_resolved_or_float64_gaps_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net32 = models.DiagonalNet(4, scale=1.0, dtype=jnp.float32)
        analysis.parameter_distance(net32, _shift(net32, 1e-3))  # 8000 ulps
        net64 = models.DiagonalNet(4, scale=1.0)
        analysis.parameter_distance(net64, _shift(net64, 1e-15))  # float64: never


def test_float32_invariant_drift_at_round_off_warns():
    # a flow that does not move: its invariant's drift is exactly 0, unresolved
    net = models.DiagonalNet(3, scale=1.0, dtype=jnp.float32)
    traj = flowgap.gradient_descent(
        lambda m: jnp.sum(m.end_to_end()) * 0, net, lr=0.1, steps=10
    )
    with pytest.warns(flowgap.PrecisionWarning, match="relative drift"):
        drift = invariants.relative_drift(invariants.diagonal_balance, traj)
    assert drift == 0.0


def _quadratic():
    """L(θ) = ½ θᵀAθ, A = diag(1, 4): sharpness exactly 4."""
    return (lambda theta: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * theta**2)), jnp.ones(2)


@pytest.mark.parametrize("rate", [1.0, 0.25])
def test_stability_threshold_is_two_over_sharpness(rate):
    # L = ½ θᵀAθ with A = diag(1, 4): sharpness 4; with rates P = `rate`,
    # the threshold for lr is 2 / (4·rate), exact up to Lanczos round-off
    loss, model = _quadratic()
    limit = 2 / (4 * rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        below = dynamics.check_stability(loss, model, lr=0.99 * limit, rates=rate)
    assert np.isclose(below, 0.99 * 2, rtol=1e-12)
    with pytest.warns(dynamics.StabilityWarning, match="2/sharpness"):
        above = dynamics.check_stability(loss, model, lr=1.01 * limit, rates=rate)
    assert np.isclose(above, 1.01 * 2, rtol=1e-12)


def test_stability_check_rejects_bad_lr():
    loss, model = _quadratic()
    with pytest.raises(ValueError, match="`lr`"):
        dynamics.check_stability(loss, model, lr=0.0)


def test_gradient_descent_checks_stability_when_asked():
    loss, model = _quadratic()
    with pytest.warns(dynamics.StabilityWarning):
        flowgap.gradient_descent(loss, model, lr=0.6, steps=3, check_stability=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flowgap.gradient_descent(loss, model, lr=0.4, steps=3, check_stability=True)
        flowgap.gradient_descent(loss, model, lr=0.6, steps=3)  # off by default


def test_float32_model_flows_in_float32_under_x64():
    # L = ½‖β − b‖² from u = v = 1: mixed dtypes must not reach Diffrax's
    # controller; the float32 solve (rtol 1e-5) tracks the float64 one
    target = jnp.array([1.0, 0.0, 2.0])
    flows = {}
    for dtype in (jnp.float32, jnp.float64):
        net = models.DiagonalNet(3, scale=1.0, dtype=dtype)
        flows[dtype] = flowgap.gradient_flow(
            lambda m: 0.5 * jnp.sum((m.end_to_end() - target.astype(dtype)) ** 2),
            net,
            t1=1.0,
            rtol=1e-5,
            atol=1e-6,
        )
    low, high = flows[jnp.float32], flows[jnp.float64]
    assert low.final.u.dtype == jnp.float32 and low.ts.dtype == jnp.float32
    # solver tolerance 1e-5 relative, amplified at most ×10 over t1 = 1
    assert np.allclose(low.final.u, high.final.u, rtol=1e-4)
