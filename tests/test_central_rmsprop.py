"""RMSProp's flows (`RMSPropField`, `RMSPropCentralFlowField`) and the discrete
RMSProp they model: exact stable flow below the edge, discrete RMSProp → flow at
order one on the clock t = kη, a toy at the edge against an independently
derived reduced ODE, tracking of RMSProp at the edge on a tanh MLP, bad input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

from flowgap import models, problems
from flowgap.dynamics import (
    FlatLayout,
    Objective,
    RMSPropCentralFlowField,
    RMSPropField,
    gradient_descent,
    gradient_flow,
    rmsprop_central_flow,
    rmsprop_flow,
    rmsprop_optimizer,
)

# ------------------------------------------------- a small smooth problem
# A 2-4-1 tanh net on six points, written on a flat θ ∈ ℝ¹⁶ (a bare-array
# model), so optax's `initial_scale` can carry a per-parameter ν₀.

_X = jnp.linspace(-1.0, 1.0, 6)[:, None] * jnp.array([[1.0, 0.5]])
_Y = jnp.sin(2 * _X[:, 0])


def _net_loss(theta):
    W1, b1, w2 = theta[:8].reshape(4, 2), theta[8:12], theta[12:16]
    return 0.5 * jnp.mean((jnp.tanh(_X @ W1.T + b1) @ w2 - _Y) ** 2)


_THETA0 = 0.5 * jax.random.normal(jax.random.key(0), (16,))
_NU0 = jax.grad(_net_loss)(_THETA0) ** 2  # the flows' default ν₀ = ∇L(θ₀)²
# one compiled stable flow for every diagonal-ν run on this problem (η, b₂, t1
# and the tolerances are traced; the shapes and options are not)
_RUN = dict(rtol=1e-11, atol=1e-13, dense=True)


def _saves(t1):
    return jnp.linspace(0.0, t1, 9)


def test_the_engine_saves_the_extra_state():
    # gradient_flow with the field itself: models, losses and traj.at are θ's,
    # the saved ν is aux["state"], and ν(0) = ν₀ = ∇L(θ₀)² (to round-off:
    # jitted and eager gradients may differ in the last bit)
    field = RMSPropField(0.01, 0.99)
    traj = gradient_flow(
        _net_loss, _THETA0, field=field, t1=1.0, ts=_saves(1.0), **_RUN
    )
    assert traj.models.shape == (9, 16) and traj.aux["state"].shape == (9, 16)
    assert np.allclose(traj.aux["state"][0], _NU0, rtol=1e-14, atol=0)
    assert np.allclose(traj.loss, jax.vmap(_net_loss)(traj.models), rtol=1e-14)
    assert np.allclose(traj.at(0.5), traj.models[4], rtol=0, atol=1e-12)
    assert traj.at(0.3).shape == (16,)


def test_discrete_rmsprop_converges_to_the_flow_at_order_one():
    # RMSProp with step η and b₂ = 1 − ρη (ρ = 1 fixed) against the flow
    # θ̇ = −∇L/(√ν + ε), ν̇ = ((1 − b₂)/η)(∇L² − ν) at T = 1: a wrong clock or
    # ν-rate (e.g. (1 − b₂) per unit time, or ν(t_k) = ν_{k+1} without
    # changing the rate) would leave an O(1) gap or spoil the order. Measured
    # gaps 1.0e-2, 4.9e-3, 2.4e-3 (local orders 1.09, 1.04, fitted 1.06); the
    # flow is solved to ~1e-10, far below the gaps.
    rho, T = 1.0, 1.0
    lrs = np.array([0.02, 0.01, 0.005])
    gaps = []
    for lr in lrs:
        b2, steps = 1 - rho * lr, int(round(T / lr))
        rms = functools.partial(
            optax.rmsprop, decay=b2, eps=1e-8, eps_in_sqrt=False, initial_scale=_NU0
        )
        gd = gradient_descent(
            _net_loss, _THETA0, lr=lr, steps=steps, save_every=steps, optimizer=rms
        )
        flow = rmsprop_flow(
            _net_loss, _THETA0, lr=lr, b2=b2, t1=T, ts=_saves(T), **_RUN
        )
        gaps.append(float(jnp.linalg.norm(gd.models[-1] - flow.models[-1])))
    # rmsprop_optimizer's default ν₀ = g₀² is optax's initial_scale = g₀²
    ours = functools.partial(rmsprop_optimizer, b2=b2, eps=1e-8)
    same = gradient_descent(
        _net_loss, _THETA0, lr=lr, steps=steps, save_every=steps, optimizer=ours
    )
    assert np.allclose(same.models, gd.models, rtol=0, atol=1e-14)
    order = np.polyfit(np.log(lrs), np.log(gaps), 1)[0]
    assert 0.9 < order < 1.2, (gaps, order)
    assert gaps[-1] < 1e-2 * float(jnp.linalg.norm(gd.models[-1] - _THETA0))


def test_scalar_rmsprop_is_the_scalar_flow_to_order_one():
    # as above, with ‖g‖² and one ν, against a hand-written loop
    lr, b2, steps = 0.005, 0.995, 200
    theta, nu = _THETA0, jnp.sum(_NU0)
    for _ in range(steps):
        g = jax.grad(_net_loss)(theta)
        nu = b2 * nu + (1 - b2) * jnp.sum(g**2)
        theta = theta - lr * g / (jnp.sqrt(nu) + 1e-8)
    ours = functools.partial(rmsprop_optimizer, b2=b2, scalar=True)
    gd = gradient_descent(
        _net_loss, _THETA0, lr=lr, steps=steps, save_every=steps, optimizer=ours
    )
    assert np.allclose(gd.models[-1], theta, rtol=0, atol=1e-13)
    flow = rmsprop_flow(
        _net_loss, _THETA0, lr=lr, b2=b2, scalar=True, t1=1.0, ts=_saves(1.0), **_RUN
    )
    # the O(η) gap (measured 5.8e-4) against a motion of 0.34
    assert float(jnp.linalg.norm(flow.models[-1] - theta)) < 5e-3
    assert float(jnp.linalg.norm(flow.models[-1] - _THETA0)) > 0.2


# -------------------------------------------- a toy at the edge, reduced ODE
# L(x, y) = ½yx² − cy from x = 0: x stays 0, H = diag(y, 0), so the top
# eigenvalue of P^½HP^½ is p_x·y with u = √p_x e_x, and with Σ = σ² e_x e_xᵀ
# (σ² = X p_x = tr Σ) the central flow reduces to three ODEs in (y, a = ν_x,
# b = ν_y), ε > 0:
#   ẏ = p_y (c − σ²/2)                       (∇⟨Σ, H⟩ = σ² e_y)
#   ȧ = ρ((2/η)²(√a + ε)² σ² − a)            (g_x swings by (2/η)P⁻¹δ; ∇L_x = 0)
#   ḃ = ρ(c² − b)
# The edge is G = (2/η)(√a + ε) − y ≥ 0 (times p_x); with Ġ = (2/η)ȧ/(2√a) − ẏ
# affine in σ², σ² = max(0, σ²*) where σ²* solves Ġ = −κG.

_C, _TOY_LR, _TOY_B2, _TOY_EPS = 1.0, 0.1, 0.9, 1e-3
# toy runs share one compiled central flow (and one stable flow)
_TOY_RUN = dict(t1=8.0, ts=jnp.linspace(0.0, 8.0, 33), rtol=1e-10, atol=1e-12)


def _toy_loss(theta):
    return 0.5 * theta[1] * theta[0] ** 2 - _C * theta[1]


def _toy_reduced(t, s):
    y, a, b = s
    rho, kappa, edge = (1 - _TOY_B2) / _TOY_LR, 1 / _TOY_LR, 2 / _TOY_LR
    py = 1 / (np.sqrt(b) + _TOY_EPS)
    lift = edge / (2 * np.sqrt(a))
    rate = -lift * rho * a - py * _C  # Ġ at σ² = 0
    slope = lift * rho * edge**2 * (np.sqrt(a) + _TOY_EPS) ** 2 + py / 2
    gap = edge * (np.sqrt(a) + _TOY_EPS) - y
    sigma2 = max(0.0, -(kappa * gap + rate) / slope)
    ds = [
        py * (_C - sigma2 / 2),
        rho * (edge**2 * (np.sqrt(a) + _TOY_EPS) ** 2 * sigma2 - a),
        rho * (_C**2 - b),
    ]
    return ds, sigma2


@pytest.mark.parametrize("scalar", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_below_the_edge_it_is_the_rmsprop_flow(scalar):
    # From x ≠ 0 the toy is a coupled nonlinear flow (x decays while y grows,
    # ν_x relaxes at ρ = 0.1). η = 0.01: 2/η = 200 against a preconditioned
    # sharpness p_x·y ≤ 17, so C ≥ κ·183 ≫ the sharpening rate, X = 0 exactly,
    # and the field computes RMSPropField's numbers (+ 0): the solves agree
    # bit for bit (measured); 1e-12 would allow for XLA fusing the two
    # programs differently.
    nu0 = 1.0 if scalar else jnp.array([1.0, 0.5])
    options = dict(lr=0.01, b2=0.999, eps=_TOY_EPS, nu0=nu0, scalar=scalar)
    theta0 = jnp.array([0.3, 1.0])
    central = rmsprop_central_flow(_toy_loss, theta0, **options, **_TOY_RUN)
    plain = rmsprop_flow(_toy_loss, theta0, **options, **_TOY_RUN)
    assert central.successful and plain.successful
    assert np.allclose(central.models, plain.models, rtol=0, atol=1e-12)
    assert np.allclose(central.aux["nu"], plain.aux["nu"], rtol=0, atol=1e-12)
    assert np.all(central.aux["sigma_trace"] == 0)
    assert np.array_equal(central.aux["predicted_loss"], central.loss)
    assert np.all(central.aux["sharpness"] < 0.1 * 2 / 0.01)
    assert central.aux["nu"].shape == ((33,) if scalar else (33, 2))
    assert "state" not in central.aux and "state" not in plain.aux
    assert float(jnp.abs(central.models[-1, 0])) < 0.1  # it moved


def test_toy_at_the_edge_matches_the_reduced_ode():
    # ν_x decays from 1 while y grows: p_x·y nears 2/η = 20 (active from t ≈ 3), and
    # then both mechanisms hold it (the oscillation raises ν_x, and flattens y).
    ts = np.asarray(_TOY_RUN["ts"])
    traj = rmsprop_central_flow(
        _toy_loss, jnp.array([0.0, 1.0]), lr=_TOY_LR, b2=_TOY_B2, eps=_TOY_EPS,
        nu0=jnp.array([1.0, 0.5]), **_TOY_RUN,
    )  # fmt: skip
    ref = scipy.integrate.solve_ivp(
        lambda t, s: _toy_reduced(t, s)[0], (0.0, 8.0), [1.0, 1.0, 0.5],
        t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14,
    )  # fmt: skip
    y, a, b = ref.y
    sigma2 = np.array([_toy_reduced(0.0, s)[1] for s in ref.y.T])
    # both solves are accurate to ~1e-10 (the kink at activation is the
    # largest error; measured 1.3e-11 in y, 3.5e-12 in ν); 1e-7 is the bound
    assert traj.successful
    assert np.all(np.abs(traj.models[:, 0]) < 1e-12)  # x stays at 0
    assert np.allclose(traj.models[:, 1], y, rtol=0, atol=1e-7)
    assert np.allclose(traj.aux["nu"], np.stack([a, b], 1), rtol=0, atol=1e-7)
    assert np.allclose(traj.aux["sigma_trace"], sigma2, rtol=0, atol=1e-7)
    sharpness = y / (np.sqrt(a) + _TOY_EPS)
    assert np.allclose(traj.aux["sharpness"], sharpness, rtol=1e-8)
    active = sigma2 > 0
    assert active.sum() > 10 and abs(sharpness[-1] - 20) < 1e-6
    assert np.all(traj.aux["qp_residual"] <= 1e-14)  # k = 1: closed form


# --------------------------------------------------- tracking at the edge


def test_tracks_rmsprop_at_the_edge_on_a_tanh_mlp():
    """RMSProp (η = 0.01, b₂ = 0.99, ν₀ = g₀²) on a 3-6-1 tanh MLP (D = 31)
    reaches the edge at step ≈ 190 and stays there; over the next 150 steps the
    central flow holds λ_max(P^½HP^½) at 2/η and predicts RMSProp's loss
    averaged over two consecutive steps, ½(L_k + L_{k+1}), compared at
    t = (k + ½)η. (A second eigenvalue reaches the edge near step 560, where
    k = 1 no longer suffices.)"""
    k1, k2 = jax.random.split(jax.random.key(0))
    problem = problems.teacher_student(
        k1, n=32, d=3, teacher_width=8, activation="tanh", decay=0.5
    )
    model = models.MLP(3, 6, 1, depth=1, activation="tanh", key=k2)
    lr, b2, steps = 0.01, 0.99, 350
    rms = functools.partial(rmsprop_optimizer, b2=b2)  # ν₀ = g₀², per leaf
    gd = gradient_descent(problem.loss, model, lr=lr, steps=steps, optimizer=rms)
    window = np.arange(200, steps, 10)
    ts = np.concatenate([[0.0], (window + 0.5) * lr])
    traj = rmsprop_central_flow(
        problem.loss, model, lr=lr, b2=b2, t1=steps * lr, ts=jnp.asarray(ts)
    )
    assert traj.successful
    # the Baumgarte gap ≥ 10 steps after activation is ≪ 2% (measured 4e-8)
    sharpness = np.asarray(traj.aux["sharpness"][1:]) * lr / 2
    assert np.all(np.abs(sharpness - 1) < 0.02), sharpness
    assert np.all(traj.aux["sigma_trace"][1:] > 0)  # at the edge throughout
    gd_loss = np.asarray(gd.loss)
    averaged = 0.5 * (gd_loss[window] + gd_loss[window + 1])
    ratio = np.asarray(traj.aux["predicted_loss"][1:]) / averaged
    # measured 1.003 … 1.039, growing along the window (1.11 by step 400)
    assert np.all(np.abs(ratio - 1) < 0.1), ratio


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("b2", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_b2_is_named(b2):
    for make in (RMSPropField, RMSPropCentralFlowField):
        with pytest.raises(ValueError, match="`b2`"):
            make(0.01, b2)
    with pytest.raises(ValueError, match="`b2`"):
        rmsprop_optimizer(0.01, b2=b2)


@pytest.mark.parametrize("eps", [-1e-8, float("inf")])
def test_bad_eps_is_named(eps):
    for make in (RMSPropField, RMSPropCentralFlowField):
        with pytest.raises(ValueError, match="`eps`"):
            make(0.01, 0.99, eps=eps)
    with pytest.raises(ValueError, match="`eps`"):
        rmsprop_central_flow(_net_loss, _THETA0, lr=0.01, b2=0.99, eps=eps, t1=1.0)


def test_other_bad_input_is_named():
    with pytest.raises(ValueError, match="`nu0`"):
        RMSPropField(0.01, 0.99, nu0=-1.0)
    with pytest.raises(ValueError, match="`nu0`"):
        RMSPropCentralFlowField(0.01, 0.99, nu0=jnp.ones(3), scalar=True)
    with pytest.raises(ValueError, match="`lr`"):
        rmsprop_flow(_net_loss, _THETA0, lr=0.0, b2=0.99, t1=1.0)
    with pytest.raises(TypeError, match="`field`"):
        rmsprop_central_flow(_net_loss, _THETA0, lr=0.01, b2=0.9, t1=1.0, field=None)
    with pytest.raises(TypeError, match="`scalar`|'scalar'"):  # ours, or the hook's
        RMSPropField(0.01, 0.99, scalar=1)
    # a zero entry of the default ν₀ = ∇L(θ₀)² (x = 0 in the toy) is refused
    theta0 = jnp.array([0.0, 1.0])
    objective = Objective(_toy_loss, None, FlatLayout.of(theta0), None)
    with pytest.raises(Exception, match="ν₀"):
        RMSPropCentralFlowField(0.1, 0.9).start(theta0, objective)
