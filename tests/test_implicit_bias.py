"""The GF limit of a depth-2 DiagonalNet from u = v = α·1 is the Woodworth
Q_α minimiser (docs: theory/implicit-bias)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap.analysis import woodworth_limit, woodworth_potential
from flowgap.dynamics import LossBelow
from flowgap.models import DiagonalNet
from flowgap.problems import sparse_recovery


@pytest.fixture
def problem(key):
    return sparse_recovery(key, n=10, d=30, sparsity=2)


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_flow_limit_is_woodworth_minimiser(problem, scale):
    flow = flowgap.gradient_flow(
        problem.loss,
        DiagonalNet(30, scale=scale),
        t1=1e6,
        solver=diffrax.Dopri8(),
        rtol=1e-10,
        atol=1e-12,
        max_steps=100_000,
        stop_when=LossBelow(1e-18),
        throw=True,
    )
    beta = flow.final.end_to_end()
    expected = woodworth_limit(problem.inputs, problem.targets, scale)
    # At L < 1e-18 the residual is ~1e-9 (1e-22 is below round-off of the
    # residual); the remaining motion of β (measured ~1e-9) and the solver's
    # error are both far below the required 1e-6.
    assert float(jnp.max(jnp.abs(beta - expected))) < 1e-6


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 10.0])
def test_woodworth_limit_satisfies_kkt(problem, scale):
    """Independent check of the dual solve: β interpolates and ∇Q_α(β) =
    arcsinh(β/2α²) lies in range(Xᵀ) (primal optimality of min Q_α s.t. Xβ = y)."""
    x, y = problem.inputs, problem.targets
    beta = woodworth_limit(x, y, scale)
    assert float(jnp.linalg.norm(x @ beta - y)) < 1e-9 * float(jnp.linalg.norm(y))
    grad_q = jax.grad(woodworth_potential)(beta, scale)
    assert np.allclose(grad_q, jnp.arcsinh(beta / (2 * scale**2)), rtol=1e-10)
    coef, *_ = jnp.linalg.lstsq(x.T, grad_q)
    assert float(jnp.linalg.norm(x.T @ coef - grad_q)) < 1e-8 * float(
        jnp.linalg.norm(grad_q)
    )


def test_small_scale_is_sparse_large_scale_is_ridge(problem):
    x, y = problem.inputs, problem.targets
    small = woodworth_limit(x, y, 1e-4)
    large = woodworth_limit(x, y, 1e2)
    ridge = x.T @ jnp.linalg.solve(x @ x.T, y)  # minimum ℓ₂ interpolator
    assert float(jnp.linalg.norm(large - ridge)) < 1e-4 * float(jnp.linalg.norm(ridge))
    assert float(jnp.sum(jnp.abs(small))) < float(jnp.sum(jnp.abs(ridge)))
    # n = 10 ≥ O(s log d) measurements of a 2-sparse β*: ℓ₁ recovers it, and
    # Q_α with α = 1e-4 is ℓ₁ up to O(1/ln(1/α)) relative effects.
    assert float(jnp.linalg.norm(small - problem.truth)) < 0.05 * float(
        jnp.linalg.norm(problem.truth)
    )


def test_equal_vector_scale_is_the_scalar_scale(problem):
    x, y = problem.inputs, problem.targets
    scalar = woodworth_limit(x, y, 0.3)
    vector = woodworth_limit(x, y, jnp.full(30, 0.3))
    # the same dual solve, with α² broadcast instead of scalar: round-off apart
    assert float(jnp.max(jnp.abs(vector - scalar))) < 1e-12
    beta = problem.truth
    assert np.isclose(
        woodworth_potential(beta, jnp.full(30, 0.3)),
        woodworth_potential(beta, 0.3),
        rtol=1e-13,
    )


def test_vector_scale_limit_satisfies_kkt(problem):
    """min Σᵢ αᵢ² q(βᵢ/αᵢ²) s.t. Xβ = y: β interpolates and the gradient
    arcsinh(βᵢ/2αᵢ²) lies in range(Xᵀ). A traced scale (under jit) gives the
    same limit."""
    x, y = problem.inputs, problem.targets
    scale = jax.random.uniform(jax.random.key(1), (30,), minval=0.05, maxval=1.0)
    beta = woodworth_limit(x, y, scale)
    traced = jax.jit(woodworth_limit)(x, y, scale)
    # the same solve, compiled differently: agreement to round-off
    assert float(jnp.max(jnp.abs(traced - beta))) < 1e-10
    assert float(jnp.linalg.norm(x @ beta - y)) < 1e-10 * float(jnp.linalg.norm(y))
    grad_q = jax.grad(woodworth_potential)(beta, scale)
    assert np.allclose(grad_q, jnp.arcsinh(beta / (2 * scale**2)), rtol=1e-10)
    coef, *_ = jnp.linalg.lstsq(x.T, grad_q)
    assert float(jnp.linalg.norm(x.T @ coef - grad_q)) < 1e-8 * float(
        jnp.linalg.norm(grad_q)
    )
    # a per-coordinate scale is a different bias from its mean scale
    mean_scale = woodworth_limit(x, y, float(jnp.mean(scale)))
    assert float(jnp.linalg.norm(beta - mean_scale)) > 1e-3


@pytest.mark.parametrize(
    "scale", [jnp.full(29, 0.3), jnp.full((30, 1), 0.3), jnp.full(30, 0.3).at[4].set(0)]
)
def test_bad_vector_scale_names_scale(problem, scale):
    with pytest.raises(ValueError, match="`scale`"):
        woodworth_limit(problem.inputs, problem.targets, scale)
    with pytest.raises(ValueError, match="`scale`"):
        woodworth_potential(problem.truth, scale)


def test_nonpositive_vector_scale_fails_under_jit(problem):
    scale = jnp.full(30, 0.3).at[4].set(-0.1)
    with pytest.raises(RuntimeError, match="`scale`"):  # eqx.error_if under jit
        jax.jit(woodworth_limit)(problem.inputs, problem.targets, scale)
