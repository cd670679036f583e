"""`sgd_weak_exponent` runs SGD, gradient flow and both SDEs on one ladder of η
and measures what the exact moments of linear regression predict."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowgap.analysis import (
    MonteCarloEstimate,
    covariance,
    sde_moments,
    sgd_moments,
    sgd_weak_exponent,
)

N, DIM, BATCH, T = 8, 2, 2, 1.0
LRS = (0.2, 0.1, 0.05)


def _problem():
    x = jr.normal(jr.key(1), (N, DIM))
    y = x @ jnp.array([1.0, -2.0]) + 0.5 * jr.normal(jr.key(2), (N,))
    return x, y


def _loss(theta, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2)


def _expected_loss(x, y, mean, second):
    """E L(θ) from E θ and E θθᵀ: L is quadratic."""
    return 0.5 * jnp.mean(
        jnp.einsum("ni,ij,nj->n", x, second, x) - 2 * y * (x @ mean) + y**2
    )


# The ladder compiles SGD once per η and each SDE once (about a minute of CPU
# with the compilations): these run with -m slow. The bad-input test stays.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def table():
    x, y = _problem()
    return sgd_weak_exponent(
        _loss,
        jnp.zeros(DIM),
        (x, y),
        observable=lambda theta: _loss(theta, (x, y)),
        lrs=LRS,
        t1=T,
        batch_size=BATCH,
        key=jr.key(0),
        num_keys=256,
        substeps=4,
    )


def _exact(order, lr):
    x, y = _problem()
    theta0 = jnp.zeros(DIM)
    if order == "sgd":
        means, seconds = sgd_moments(
            x, y, theta0, lr=lr, batch_size=BATCH, steps=round(T / lr)
        )
    else:
        means, seconds = sde_moments(
            x, y, theta0, lr=lr, batch_size=BATCH, t1=T, order=order
        )
    return float(_expected_loss(x, y, means[-1], seconds[-1]))


@slow
def test_sgd_estimates_match_the_exact_recursion(table):
    # The reference column is E L(θ_K) of SGD over 256 keys; a 3-SE band holds
    # with probability 99.7% per point (fixed seeds: deterministic).
    for lr, estimate in zip(LRS, table.reference):
        assert abs(float(estimate.mean) - _exact("sgd", lr)) < 3 * float(
            estimate.stderr
        )


@slow
def test_sde_estimates_match_the_exact_moment_ode(table):
    # Euler–Maruyama at dt = η/4, extrapolated on coupled paths: what remains of
    # the solver's bias is O(dt²) ≤ 2.5e-3·C, against a Monte Carlo error of
    # about 1e-2 over 256 keys.
    for order in (1, 2):
        for lr, estimate in zip(LRS, table.approximations[f"SDE order {order}"]):
            exact = _exact(order, lr)
            assert abs(float(estimate.mean) - exact) < 3 * float(estimate.stderr)


@slow
def test_gradient_flow_is_exact_and_misses_the_noise(table):
    x, y = _problem()
    means, seconds = sde_moments(
        x, y, jnp.zeros(DIM), lr=0.1, batch_size=BATCH, t1=T, order=1
    )
    # GF's θ(T) is the SDE's mean (the drift is affine), with no covariance
    gf = _expected_loss(x, y, means[-1], jnp.outer(means[-1], means[-1]))
    for value in table.approximations["gradient flow"]:
        assert abs(float(value) - float(gf)) < 1e-10
    noise = float(jnp.trace(covariance(means, seconds)[-1]))
    assert noise > 0  # the part of E L that gradient flow cannot see


@slow
def test_table_errors_are_the_differences_of_the_estimates(table):
    for name, values in table.approximations.items():
        for i, value in enumerate(values):
            mean = value.mean if isinstance(value, MonteCarloEstimate) else value
            expected = abs(float(table.reference[i].mean) - float(mean))
            np.testing.assert_allclose(table.errors[name][i], expected, rtol=1e-12)


def test_bad_input_names_the_argument():
    x, y = _problem()
    common = dict(
        observable=lambda theta: theta,
        lrs=LRS,
        t1=T,
        batch_size=BATCH,
        key=jr.key(0),
    )
    with pytest.raises(TypeError, match="observable"):
        sgd_weak_exponent(_loss, jnp.zeros(DIM), (x, y), **(common | {"observable": 1}))
    with pytest.raises(ValueError, match="num_keys"):
        sgd_weak_exponent(_loss, jnp.zeros(DIM), (x, y), **common, num_keys=1)
    with pytest.raises(ValueError, match="lrs"):
        sgd_weak_exponent(_loss, jnp.zeros(DIM), (x, y), **(common | {"lrs": (0.3,)}))
