"""The heavier checks of SGD's SDE, run with `-m slow`: the other exact-moment
cases (without replacement, label noise alone, order 2), the derivative in η at
a given step, and what vmap does to runs whose data are shared. Conventions,
problem and tolerances as in test_stochastic.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from .test_stochastic import (
    DATA,
    DELTA,
    DT0,
    LR,
    STEPS,
    T1,
    THETA0,
    D,
    N,
    X,
    Y,
    _bits,
    _central_difference,
    _check_sde,
    _descent,
    _diagonal,
    _estimates,
    _euler_maruyama_moments,
    _flow,
    _flow_at,
    _flow_finals,
    _in_errors,
    _keys,
    _mean_final_loss,
    _run,
    _sde_moments,
)

pytestmark = pytest.mark.slow


def test_sde_moments_without_replacement_match_the_moment_ode():
    samples, _ = _flow_finals(22, batch_size=2, replace=False)
    exact = _sde_moments(lr=LR, b=2, replace=False)
    _check_sde(samples, exact, _euler_maruyama_moments(lr=LR, b=2, replace=False))
    assert np.min(_diagonal(_in_errors(samples, exact[1]))) > 30
    # with replacement Σ is larger by (n − 1)/(n − b) = 5/4: > 10 SE
    other = _sde_moments(lr=LR, b=2, replace=True)
    assert np.min(_diagonal(_in_errors(samples, other[1] - exact[1]))) > 10


def test_label_noise_sde_moments_match_the_moment_ode():
    # full batch: the noise is ηδ²A/n, constant in θ
    options = dict(lr=LR, b=N, replace=False, delta=DELTA)
    samples, _ = _flow_finals(23, batch_size=N, replace=False, label_noise=DELTA)
    exact = _sde_moments(**options)
    _check_sde(samples, exact, _euler_maruyama_moments(**options))
    assert np.min(_diagonal(_in_errors(samples, exact[1]))) > 30


def test_order_two_mean_is_the_modified_drift():
    """Order 2 on least squares: dm/dt = −(Ãm − c̃), Ã = A + (η/2)A²,
    c̃ = c + (η/2)Ac, so m(t) = θ* + e^{−tÃ}(θ₀ − θ*) with θ* = A⁻¹c. η = 1/2 and
    b = 4 of 6 without replacement (c_b = 1/10): small noise against a large
    order-2 term, so the order-1 mean is many SE away (measured 18). The
    covariance is checked against the order-2 moment ODE too, which covers the
    SDE's sampling without replacement."""
    lr, b = 0.5, 4
    samples, _ = _flow_finals(25, lr=lr, batch_size=b, replace=False, order=2)
    a, c = X.T @ X / N, X.T @ Y / N
    minimiser = np.linalg.solve(a, c)
    modified = a + lr / 2 * a @ a
    mean = minimiser + expm(-T1 * modified) @ (THETA0 - minimiser)
    euler = minimiser + np.linalg.matrix_power(np.eye(D) - DT0 * modified, STEPS) @ (
        THETA0 - minimiser
    )
    m, m_se, _, _ = _estimates(samples)
    assert np.max(np.abs(euler - mean) / m_se) < 0.3
    assert np.max(np.abs(m - mean) / m_se) < 3, np.abs(m - mean) / m_se
    order_one = minimiser + expm(-T1 * a) @ (THETA0 - minimiser)
    assert np.max(np.abs(order_one - mean) / m_se) > 10
    # and the covariance is the order-2 moment ODE's
    exact = _sde_moments(lr=lr, b=b, replace=False, order=2)
    _check_sde(
        samples, exact, _euler_maruyama_moments(lr=lr, b=b, replace=False, order=2)
    )


def test_flow_derivative_in_lr_with_a_given_step():
    # as test_flow_derivative_in_lr_matches_central_differences, dt0 given
    f = _mean_final_loss(lambda k, d, lr: _flow_at(k, d, lr, dt0=0.01))
    grad, fd = float(jax.grad(f)(0.1)), _central_difference(f, 0.1)
    assert abs(fd) > 1e-3
    assert abs(grad - fd) < 1e-6 * abs(fd), (grad, fd)


def _flow_subset(key, data=DATA):
    """The SDE with label noise too, its Σ estimated from 3 rows."""
    return _flow(key, data, label_noise=DELTA, subset=3)


def _label_noise_gd(key, data=DATA):
    return _descent(key, data, batch_size=N, replace=False)


def test_same_key_same_bits_with_a_subset():
    key = jax.random.key(7)
    first = _flow_subset(key)
    assert _bits(_flow_subset(key)) == _bits(first)
    other = _flow_subset(jax.random.key(8))
    assert not np.allclose(other.models.w[-1], first.models.w[-1])


@pytest.mark.parametrize("run", [_flow, _flow_subset, _label_noise_gd])
def test_vmap_over_keys_with_shared_data(run):
    """Full-data products (the SDE's drift ∇L = Xᵀr/n; label-noise GD's full
    batch) with data shared by a batch of keys become one matrix product over
    all keys, summed in another order than the solo run's matrix-vector product
    (as for gradient_descent): equal to a few ulps (measured: at most 2.2e-16
    on θ ~ 1, in a minority of runs). With a copy of the data per key, the
    models are the solo run's bit for bit (SGD's saved losses, L on the full
    data batched over the saves, to an ulp)."""
    keys = _keys(9, 8)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (8,) + x.shape), DATA)
    shared = jax.vmap(run)(keys)
    own = jax.vmap(run)(keys, stacked)
    for i, key in enumerate(keys):
        solo = run(key)
        assert np.allclose(shared.models.w[i], solo.models.w, rtol=0, atol=1e-14)
        assert np.allclose(shared.loss[i], solo.loss, rtol=1e-14, atol=0)
        assert np.array_equal(_run(own, i).models.w, solo.models.w)
        assert np.allclose(own.loss[i], solo.loss, rtol=1e-14, atol=0)
