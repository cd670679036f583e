import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flowgap
from flowgap import RESULTS
from flowgap.analysis import predictor_hessian_norm, sharpness, track_sharpness
from flowgap.models import MLP, TwoLayer
from flowgap.problems import teacher_student

from .helpers import quadratic


def _dense_hessian(fn, model):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = ravel_pytree(params)
    return jax.hessian(lambda t: fn(eqx.combine(unravel(t), static)))(theta)


@pytest.fixture
def setting(key):
    problem = teacher_student(key, n=20, d=4, teacher_width=3, activation="tanh")
    model = TwoLayer(4, 6, 1, activation="tanh", scale=0.7, key=key)
    return problem, model


def test_lanczos_matches_eigvalsh(setting):
    problem, model = setting
    exact = jnp.linalg.eigvalsh(_dense_hessian(problem.loss, model))[::-1]
    top3 = sharpness(problem.loss, model, k=3)  # iters = D = 30: exact Krylov space
    assert np.allclose(top3, exact[:3], rtol=1e-8, atol=1e-10)
    assert np.isclose(sharpness(problem.loss, model), exact[0], rtol=1e-8)
    # with fewer iterations than D the top value has already converged
    assert np.isclose(sharpness(problem.loss, model, iters=20), exact[0], rtol=1e-8)
    power = sharpness(problem.loss, model, method="power", iters=3000)
    assert np.isclose(power, exact[0], rtol=1e-8)


def test_warm_start_and_tracking(setting):
    problem, model = setting
    value, vectors = sharpness(problem.loss, model, return_vectors=True)
    warm = sharpness(problem.loss, model, iters=3, init=vectors[:, 0])
    assert np.isclose(warm, value, rtol=1e-10)  # an eigenvector converges at once
    gd = flowgap.gradient_descent(problem.loss, model, lr=0.1, steps=40, save_every=10)
    tracked = track_sharpness(problem.loss, gd)
    exact = [
        jnp.linalg.eigvalsh(_dense_hessian(problem.loss, gd[i]))[-1] for i in range(5)
    ]
    assert np.allclose(tracked, exact, rtol=1e-8)


def test_predictor_hessian_norm(key):
    net = MLP(3, 5, 1, depth=2, weight_norm=True, key=key)
    x = jnp.array([0.3, -1.0, 0.5])
    hess = _dense_hessian(lambda m: m(x)[0], net)
    exact = jnp.max(jnp.abs(jnp.linalg.eigvalsh(hess)))
    assert np.isclose(
        predictor_hessian_norm(net, x, iters=hess.shape[0]), exact, rtol=1e-8
    )
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
