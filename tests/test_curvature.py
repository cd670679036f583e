import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

import flowgap
from flowgap import RESULTS, analysis
from flowgap._lanczos import default_tol, lanczos, lanczos_top
from flowgap.analysis import predictor_hessian_norm, sharpness, track_sharpness
from flowgap.models import MLP, TwoLayer
from flowgap.problems import RegressionProblem, teacher_student

from .helpers import quadratic


def _flat(fn, model):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = ravel_pytree(params)
    return theta, lambda t: fn(eqx.combine(unravel(t), static))


@eqx.filter_jit
def _dense_hessian(fn, model):
    theta, value = _flat(fn, model)
    return jax.hessian(value)(theta)


def _start(dim):
    """The start vector of `sharpness` at its default key."""
    return jax.random.normal(jax.random.key(0), (dim,))


class CountingLoss(eqx.Module):
    """Wraps a problem's loss and counts how often it is traced (≈ compiled)."""

    problem: RegressionProblem
    traces: list = eqx.field(static=True)

    def __call__(self, model):
        self.traces.append(1)
        return self.problem.loss(model)


@pytest.fixture
def setting(key):
    problem = teacher_student(key, n=20, d=4, teacher_width=3, activation="tanh")
    model = TwoLayer(4, 6, 1, activation="tanh", scale=0.7, key=key)
    return problem, model


def test_quadratic_with_known_spectrum(key):
    # H = Q diag(λ) Qᵀ: 36 eigenvalues in [0.1, 1] under a well-separated top
    # 4, 2, 1.5
    spectrum = jnp.concatenate([jnp.linspace(0.1, 1.0, 36), jnp.array([1.5, 2.0, 4.0])])
    q, _ = jnp.linalg.qr(jax.random.normal(key, (39, 39)))
    a = q @ jnp.diag(spectrum) @ q.T

    @jax.jit
    def drivers(v0):
        def top3(tol):
            return lanczos_top(lambda v: a @ v, v0, 39, k=3, tol=tol)

        return (
            # the default tol, and tol = 0: no stop before D steps (exact)
            jax.vmap(top3)(jnp.array([default_tol(jnp.float64), 0.0])),
            # float32: the default tol is √ε = 3.5e-4, and λ_max (error
            # ≤ residual²/gap) is exact to float32 rounding
            lanczos_top(
                lambda v: a.astype(jnp.float32) @ v, v0.astype(jnp.float32), 39
            ),
        )

    (values, _, info), single = drivers(_start(39))
    assert np.allclose(values, [4.0, 2.0, 1.5], rtol=1e-10)
    assert np.allclose(values[1], [4.0, 2.0, 1.5], rtol=1e-13)
    # stopped on the residual well before D steps; without a stop, all D
    assert np.all(info.converged) and int(info.num_hvps[0]) < 30
    assert int(info.num_hvps[1]) == 39 and np.all(info.residuals[1] < 1e-12)
    value, _, info = single
    assert value.dtype == jnp.float32 and np.isclose(value[0], 4.0, rtol=1e-6)
    assert bool(info.converged) and info.residuals[0] <= 3.5e-4 * value[0]
    assert analysis.lanczos is lanczos  # the fixed-step driver stays public


def test_lanczos_matches_eigvalsh(setting):
    problem, model = setting
    exact = jnp.linalg.eigvalsh(_dense_hessian(problem.loss, model))[::-1]
    top3 = sharpness(problem.loss, model, k=3)
    assert np.allclose(top3, exact[:3], rtol=1e-10)
    assert np.isclose(sharpness(problem.loss, model), exact[0], rtol=1e-10)
    power = sharpness(problem.loss, model, method="power", iters=3000)
    assert np.isclose(power, exact[0], rtol=1e-8)


def test_residual_stop_against_eigsh(key):
    """A 105-parameter tanh MLP: the stop's residual is the true ‖Hy − θy‖, λ_max
    is exact to 1e-10, and it takes fewer Hessian–vector products than the step
    limit and at most twice as many as ARPACK (scipy `eigsh`, here on the dense
    Hessian: the count depends on the operator only) at the same tolerance."""
    problem = teacher_student(key, n=32, d=2, teacher_width=4, activation="tanh")
    net = MLP(2, 8, 1, depth=2, activation="tanh", key=jax.random.key(1))
    hess = np.asarray(_dense_hessian(problem.loss, net))
    exact = np.linalg.eigvalsh(hess)[-1]
    for tol in (1e-8, 1e-11):
        top, vectors, info = sharpness(
            problem.loss, net, tol=tol, return_vectors=True, return_info=True
        )
        y = np.asarray(vectors[:, 0])
        residual = np.linalg.norm(hess @ y - float(top) * y)
        assert bool(info.converged) and np.isclose(top, exact, rtol=1e-10)
        # the Lanczos estimate |β_m s_m| is the residual, up to rounding
        assert abs(residual - info.residuals[0]) < 1e-12 + 1e-3 * residual
        assert residual <= tol * top
        calls = []

        def matvec(v):
            calls.append(1)
            return hess @ v

        operator = scipy.sparse.linalg.LinearOperator(
            hess.shape, matvec=matvec, dtype=np.float64
        )
        start = np.asarray(_start(hess.shape[0]))
        scipy.sparse.linalg.eigsh(operator, k=1, which="LA", tol=tol, v0=start)
        assert int(info.num_hvps) < 64 and int(info.num_hvps) <= 2 * len(calls)


def test_traced_and_vmapped_inputs(setting, key):
    problem, _ = setting
    scales = jnp.array([0.3, 0.7, 1.2])
    tols = jnp.array([1e-4, 1e-8, 1e-8])

    def at(scale, tol):
        net = TwoLayer(4, 6, 1, activation="tanh", scale=scale, key=key)
        return sharpness(problem.loss, net, tol=tol, return_info=True)

    values, info = jax.vmap(at)(scales, tols)  # the model and tol traced
    for i in range(3):
        solo, solo_info = at(float(scales[i]), float(tols[i]))
        # each run stops at its own step; batched matvecs only reassociate sums
        assert np.isclose(values[i], solo, rtol=1e-12)
        assert int(info.num_hvps[i]) == int(solo_info.num_hvps)
    loose = at(0.3, 1e-8)[1]
    assert int(info.num_hvps[0]) < int(loose.num_hvps)  # tol 1e-4 stops earlier


def test_tracking_warm_starts_and_compiles_once(setting):
    """Warm starts and tracking against dense Hessians; new parameters, data,
    keys and tolerances reuse the compiled programs (traces of the loss)."""
    problem, model = setting
    traces = []
    loss = CountingLoss(problem, traces)
    other = teacher_student(
        jax.random.key(1), n=20, d=4, teacher_width=3, activation="tanh"
    )
    moved = TwoLayer(4, 6, 1, activation="tanh", scale=0.5, key=jax.random.key(2))
    value, vectors = sharpness(loss, model, return_vectors=True)
    first = len(traces)
    sharpness(CountingLoss(problem, traces), moved, tol=1e-6, return_info=True)
    sharpness(CountingLoss(other, traces), model, key=jax.random.key(3))
    assert len(traces) == first
    warm, info = sharpness(loss, model, init=vectors[:, 0], return_info=True)
    assert np.isclose(warm, value, rtol=1e-12) and int(info.num_hvps) <= 2
    gd = flowgap.gradient_descent(problem.loss, model, lr=0.1, steps=40, save_every=10)
    tracked, info = track_sharpness(loss, gd, return_info=True)
    exact = [
        jnp.linalg.eigvalsh(_dense_hessian(problem.loss, gd[i]))[-1] for i in range(5)
    ]
    assert np.allclose(tracked, exact, rtol=1e-10) and np.all(info.converged)
    # each save starts from the previous eigenvector: fewer products than cold
    assert np.all(info.num_hvps[1:] < info.num_hvps[0])
    # saves after a stop are non-finite: NaN, and no products spent on them
    stopped = eqx.tree_at(
        lambda t: t.models,
        gd,
        jax.tree.map(lambda a: a.at[3:].set(jnp.nan), gd.models),
    )
    traced = len(traces)
    tracked, info = track_sharpness(loss, stopped, return_info=True)
    assert np.allclose(tracked[:3], exact[:3], rtol=1e-10)
    assert np.all(np.isnan(tracked[3:])) and np.all(info.num_hvps[3:] == 0)
    other_gd = flowgap.gradient_descent(
        other.loss, moved, lr=0.2, steps=40, save_every=10
    )
    track_sharpness(
        CountingLoss(other, traces), other_gd, key=jax.random.key(4), tol=1e-5
    )
    assert len(traces) == traced


def test_predictor_hessian_norm(key):
    net = MLP(3, 5, 1, depth=2, weight_norm=True, key=key)
    x = jnp.array([0.3, -1.0, 0.5])
    hess = _dense_hessian(lambda m: m(x)[0], net)
    exact = jnp.max(jnp.abs(jnp.linalg.eigvalsh(hess)))
    norm, info = predictor_hessian_norm(net, x, return_info=True)
    assert np.isclose(norm, exact, rtol=1e-10) and bool(info.converged)
    with pytest.raises(ValueError, match="single output"):
        predictor_hessian_norm(MLP(3, 5, 2, key=key), x)


def test_edge_of_stability_threshold_on_a_quadratic(key):
    a, b, loss = quadratic(5, key, lo=0.5, hi=2.0)
    lam = float(sharpness(loss, jnp.zeros(5)))
    assert np.isclose(lam, 2.0, rtol=1e-10)
    # |1 − ηλ| = 1.04 per step: the loss grows ~e^{0.08k}; call 1e6 × L(0) divergence
    l0 = float(loss(jnp.ones(5)) - loss(jnp.linalg.solve(a, b)))
    above = flowgap.gradient_descent(
        loss, jnp.ones(5), lr=1.02 * 2 / lam, steps=5000, max_loss=1e6 * l0
    )
    assert above.result == RESULTS.diverged
    assert 100 < int(above.stats["stop_step"]) < 5000
    below = flowgap.gradient_descent(loss, jnp.ones(5), lr=0.98 * 2 / lam, steps=5000)
    assert below.result == RESULTS.successful
    assert np.allclose(below.final, jnp.linalg.solve(a, b), atol=1e-8)


def test_bad_input(setting):
    problem, model = setting
    with pytest.raises(ValueError, match="`method`"):
        sharpness(problem.loss, model, method="arnoldi")
    with pytest.raises(ValueError, match="`init`"):
        sharpness(problem.loss, model, init=jnp.ones(3))
    with pytest.raises(ValueError, match="`k`"):
        sharpness(problem.loss, model, k=2, method="power")
    for tol in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="`tol`"):
            sharpness(problem.loss, model, tol=tol)
