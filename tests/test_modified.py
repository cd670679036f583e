"""Backward error analysis: GD is O(η), O(η²), O(η³) close to GF and the order-1
and order-2 modified flows; compare() on the shared clock."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

import flowgap
from flowgap.analysis import gap_exponent
from flowgap.dynamics import compare, modified_flow
from flowgap.models import DeepLinear, TwoLayer
from flowgap.problems import low_rank, teacher_student

from .helpers import quadratic, tree_distance


@pytest.mark.parametrize("order", [1, 2])
def test_modified_flow_closed_form_on_quadratic(key, order):
    """L = ½θᵀAθ − bᵀθ has ∇³L = 0, so the modified fields are linear:
    order 1: −(I + ηA/2)(Aθ − b); order 2: −(I + ηA/2 + η²A²/3)(Aθ − b)."""
    a, b, loss = quadratic(5, key)
    lr, t1 = 0.3, 2.0
    star = jnp.linalg.solve(a, b)
    m = jnp.eye(5) + lr / 2 * a + (lr**2 / 3 * a @ a if order == 2 else 0)
    theta0 = jnp.ones(5)
    traj = modified_flow(
        loss, theta0, lr=lr, order=order, t1=t1, rtol=1e-12, atol=1e-12
    )
    exact = star + expm(-t1 * m @ a) @ (theta0 - star)
    assert np.allclose(traj.final, exact, atol=1e-8)


def _cases(key):
    return {
        "tanh-two-layer": (
            teacher_student(key, n=20, d=4, teacher_width=3, activation="tanh"),
            TwoLayer(4, 6, 1, activation="tanh", scale=0.5, key=key),
        ),
        "deep-linear": (
            low_rank(key, d_in=4, d_out=3, rank=1),
            DeepLinear((4, 5, 3), scale=0.5, key=key),
        ),
    }


@pytest.mark.parametrize("name", ["tanh-two-layer", "deep-linear"])
def test_gap_exponents_are_1_2_3(key, name):
    problem, model = _cases(key)[name]
    table = gap_exponent(problem.loss, model, lrs=[0.1, 0.05, 0.025, 0.0125], t1=1.0)
    for order, fit in table.fits.items():
        assert abs(fit["slope"] - (order + 1)) <= 0.15, (order, fit)
        # the four gaps lie on one power law: a 95% interval narrower than
        # ±0.05 (a curved, pre-asymptotic ladder gives a wide one; measured
        # half-widths are ≤ 0.02 here)
        low, high = fit["ci"]
        assert high - low <= 0.1, (order, fit)
    assert "order-2 modified flow" in table.table()


def test_quadratic_gap_exponents(key):
    _, _, loss = quadratic(4, key)
    table = gap_exponent(loss, jnp.ones(4), lrs=[0.1, 0.05, 0.025, 0.0125], t1=1.0)
    for order, fit in table.fits.items():
        assert abs(fit["slope"] - (order + 1)) <= 0.15, (order, fit)


def test_new_lr_does_not_recompile(key):
    problem, model = _cases(key)["deep-linear"]
    traces = []

    def loss(m):
        traces.append(1)
        return problem.loss(m)

    modified_flow(loss, model, lr=0.1, order=2, t1=0.5)
    first = len(traces)
    modified_flow(loss, model, lr=0.05, order=2, t1=0.7)
    assert len(traces) == first


def test_series_field_is_every_order_in_one_program(key):
    """`SeriesField` is GF (η = 0: the other terms are multiplied by 0) and the
    order-1 and order-2 modified flows (w = 0, 1), each order and η from one
    compiled solve: the loss is traced once. Same values, so the same steps:
    the solves agree to round-off (1e-14 on θ of norm ~1)."""
    from flowgap.dynamics._modified import SeriesField

    problem, model = _cases(key)["tanh-two-layer"]
    traces = []

    def loss(m):
        traces.append(1)
        return problem.loss(m)

    options = dict(t1=0.5, rtol=1e-12, atol=1e-12)
    solved = {}
    for order, lr in [(2, 0.1), (0, 0.1), (1, 0.1), (1, 0.05), (2, 0.05)]:
        solved[order, lr] = flowgap.gradient_flow(
            loss, model, field=SeriesField.of_order(order, lr), **options
        )
        if len(solved) == 1:
            first = len(traces)
    assert len(traces) == first
    flow = flowgap.gradient_flow(problem.loss, model, **options)
    assert tree_distance(solved[0, 0.1].final, flow.final) < 1e-14
    for order, lr in [(1, 0.1), (1, 0.05), (2, 0.1), (2, 0.05)]:
        alone = modified_flow(problem.loss, model, lr=lr, order=order, **options)
        assert tree_distance(solved[order, lr].final, alone.final) < 1e-14
    with pytest.raises(ValueError, match="`order`"):
        SeriesField.of_order(3, 0.1)


def test_compare_on_the_shared_clock(key):
    a, b, loss = quadratic(4, key)
    gd = flowgap.gradient_descent(loss, jnp.ones(4), lr=0.1, steps=50, save_every=5)
    ts, values = compare(gd, gd)
    assert np.array_equal(ts, gd.ts) and np.all(values == 0)
    # a flow saved elsewhere, evaluated at GD's times by dense interpolation
    flow = flowgap.gradient_flow(
        loss,
        jnp.ones(4),
        t1=5.0,
        ts=jnp.array([0.0, 1.3, 5.0]),
        dense=True,
        rtol=1e-12,
        atol=1e-12,
    )
    ts, values = compare(gd, flow)
    star = jnp.linalg.solve(a, b)
    exact = jnp.stack([star + expm(-t * a) @ (jnp.ones(4) - star) for t in ts])
    expected = jnp.linalg.norm(gd.models - exact, axis=1)
    # Tsit5's dense output at 1e-12 is accurate to ~1e-10 here
    assert np.allclose(values, expected, atol=1e-8)
    ts, values = compare(gd, flow, metric="loss", loss=loss)
    assert np.allclose(values, jnp.abs(gd.loss - jax.vmap(loss)(exact)), atol=1e-8)
    with pytest.raises(ValueError, match="no save at t = 0.05"):
        compare(gd, flow, ts=[0.05])


def test_bad_input(key):
    problem, model = _cases(key)["deep-linear"]
    with pytest.raises(ValueError, match="`order`"):
        modified_flow(problem.loss, model, lr=0.1, order=3, t1=1.0)
    with pytest.raises(ValueError, match="`lr`"):
        modified_flow(problem.loss, model, lr=-0.1, t1=1.0)
    a = flowgap.gradient_descent(problem.loss, model, lr=0.1, steps=4)
    other = flowgap.gradient_descent(
        problem.loss, DeepLinear((4, 2, 3), scale=0.5, key=key), lr=0.1, steps=4
    )
    with pytest.raises(ValueError, match="different (model structures|parameters)"):
        compare(a, other)
    with pytest.raises(ValueError, match="`metric`"):
        compare(a, a, metric="nope")
    with pytest.raises(ValueError, match="`lrs`"):
        gap_exponent(problem.loss, model, lrs=[0.3], t1=1.0)
    with pytest.raises(ValueError, match="divide"):
        gap_exponent(problem.loss, model, lrs=[0.3, 0.2], t1=1.0)


@pytest.mark.parametrize("name", ["tanh-two-layer", "deep-linear"])
def test_heavy_ball_gap_orders(key, name):
    """Heavy ball (optax.sgd with momentum β) is O(η) from the order-0 flow
    −∇L/(1 − β) and O(η²) from the order-1 modified flow with its shifted start."""
    import functools

    import diffrax
    import optax

    from flowgap.analysis import loglog_slope, parameter_distance
    from flowgap.dynamics import momentum_flow

    problem, model = _cases(key)[name]
    beta, t1 = 0.5, 1.0
    lrs = t1 / np.array([40, 80, 160, 320])
    gaps = {0: [], 1: []}
    for lr in lrs:
        steps = round(t1 / lr)
        gd = flowgap.gradient_descent(
            problem.loss,
            model,
            lr=lr,
            steps=steps,
            save_every=steps,
            optimizer=functools.partial(optax.sgd, momentum=beta),
        )
        for order in gaps:
            flow = momentum_flow(
                problem.loss,
                model,
                lr=lr,
                beta=beta,
                order=order,
                t1=t1,
                solver=diffrax.Dopri8(),
                rtol=1e-13,
                atol=1e-13,
            )
            gaps[order].append(parameter_distance(gd.final, flow.final))
    for order, values in gaps.items():
        assert abs(loglog_slope(lrs, values)["slope"] - (order + 1)) <= 0.15
    with pytest.raises(ValueError, match="`beta`"):
        momentum_flow(problem.loss, model, lr=0.1, beta=1.5, t1=1.0)
