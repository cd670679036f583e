"""`gradient_flow_with_fallback` on a stiff quadratic flow with a closed-form
solution, and `stable_learning_rate` against exact Hessian eigenvalues."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

from flowgap import dynamics

from .helpers import tree_allclose


class Quadratic(eqx.Module):
    """L(θ) = ½ Σᵢ λᵢθᵢ²: the gradient flow is θᵢ(t) = θᵢ(0)e^{−λᵢt}. The
    curvatures are an array field, so new values never recompile a solve."""

    curvature: Float[Array, " d"]

    def __call__(self, theta):
        return 0.5 * jnp.sum(self.curvature * theta**2)


THETA0 = jnp.array([1.0, -0.5])
T1 = 5.0
# Tsit5's step on λ = 1e4 is held near its stability bound ≈ 3.3e-4, so reaching
# t1 = 5 takes ~1.5e4 steps: 200 are enough for λ ≤ 2 and far too few for 1e4.
OPTIONS = dict(t1=T1, max_steps=200, rtol=1e-8, atol=1e-10)
STIFF, MILD = jnp.array([1.0, 1e4]), jnp.array([1.0, 2.0])


def _exact(curvature):
    return THETA0 * jnp.exp(-curvature * T1)


def _close_to_exact(final, curvature):
    # Kvaerno5 at rtol 1e-8 over 5 decay times: measured relative error ~3e-8
    # on e^{−5}; the e^{−5e4} component is below atol = 1e-10.
    return np.allclose(final, _exact(curvature), rtol=1e-6, atol=1e-10)


def test_fallback_finishes_a_stiff_flow():
    loss = Quadratic(STIFF)
    explicit = dynamics.gradient_flow(loss, THETA0, **OPTIONS)
    assert not bool(explicit.successful)  # Tsit5 alone runs out of steps
    traj = dynamics.gradient_flow_with_fallback(loss, THETA0, **OPTIONS)
    assert bool(traj.successful) and bool(traj.stats["fallback"])
    assert float(traj.stop_time) == T1
    assert int(traj.stats["num_field_evals"]) == -1  # the implicit run's stats
    assert _close_to_exact(traj.final, STIFF)


def test_no_fallback_where_the_explicit_solve_succeeds():
    loss = Quadratic(MILD)
    traj = dynamics.gradient_flow_with_fallback(loss, THETA0, **OPTIONS)
    explicit = dynamics.gradient_flow(loss, THETA0, **OPTIONS)
    assert not bool(traj.stats["fallback"])
    stats = {k: v for k, v in traj.stats.items() if k != "fallback"}
    assert tree_allclose(eqx.tree_at(lambda t: t.stats, traj, stats), explicit)


def test_under_vmap_each_run_keeps_its_own_solve():
    def solve(curvature):
        return dynamics.gradient_flow_with_fallback(
            Quadratic(curvature), THETA0, **OPTIONS
        )

    traj = jax.jit(jax.vmap(solve))(jnp.stack([MILD, STIFF]))
    assert traj.stats["fallback"].tolist() == [False, True]
    assert bool(jnp.all(traj.successful))
    mild = dynamics.gradient_flow(Quadratic(MILD), THETA0, **OPTIONS)
    # The mild run is Tsit5's, step for step (same steps; batched round-off only).
    assert int(traj.stats["num_steps"][0]) == int(mild.stats["num_steps"])
    assert np.allclose(traj.final[0], mild.final, rtol=1e-13, atol=0)
    assert _close_to_exact(traj.final[1], STIFF)


def test_throw_when_the_fallback_fails_too():
    # An explicit "fallback" with the same budget fails as well (and compiles fast).
    with pytest.raises(dynamics.SolverError, match="fallback"):
        dynamics.gradient_flow_with_fallback(
            Quadratic(STIFF),
            THETA0,
            fallback_solver=diffrax.Tsit5(),
            fallback_max_steps=200,
            throw=True,
            **OPTIONS,
        )


def test_dense_output_is_refused():
    with pytest.raises(ValueError, match="dense"):
        dynamics.gradient_flow_with_fallback(
            Quadratic(MILD), THETA0, dense=True, **OPTIONS
        )


def _spd(key, eigenvalues):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (len(eigenvalues),) * 2))
    return q @ jnp.diag(jnp.asarray(eigenvalues)) @ q.T


@pytest.mark.parametrize("rates", [None, "vector"])
def test_stable_learning_rate_is_exact_on_a_quadratic(key, rates):
    """L(θ) = ½θᵀAθ has H = A everywhere; with rates P the bound is
    2/λ_max(P^½AP^½). D = 6 ≤ 64 Lanczos steps: exact up to round-off."""
    a = _spd(key, [0.1, 0.5, 1.0, 3.0, 7.0, 20.0])
    theta = jax.random.normal(jax.random.fold_in(key, 1), (6,))
    p = None if rates is None else jnp.linspace(0.2, 2.0, 6)
    root = jnp.ones(6) if p is None else jnp.sqrt(p)
    top = np.linalg.eigvalsh(np.asarray(root[:, None] * a * root[None, :]))[-1]
    lr = dynamics.stable_learning_rate(
        lambda t: 0.5 * t @ a @ t, theta, fraction=0.3, rates=p
    )
    assert float(lr) == pytest.approx(0.3 * 2 / top, rel=1e-12)


def test_stable_learning_rate_is_traceable_and_inf_without_curvature(key):
    a = _spd(key, [1.0, 4.0, 9.0])

    def loss(theta):
        return 0.5 * theta @ a @ theta

    fractions = jnp.array([0.25, 0.5])
    lrs = jax.jit(
        jax.vmap(lambda f: dynamics.stable_learning_rate(loss, jnp.ones(3), fraction=f))
    )(fractions)
    assert np.allclose(lrs, fractions * 2 / 9.0, rtol=1e-12)
    concave = dynamics.stable_learning_rate(lambda t: -jnp.sum(t**2), jnp.ones(3))
    assert float(concave) == np.inf
