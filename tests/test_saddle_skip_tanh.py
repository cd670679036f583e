"""The plateau-skipping trainer on tanh networks (docs: studies/saddle-skip,
part 3): whitened jumps from the σ'(0)-weighted coefficient matrix and
Newton–CG stages visit the saddles small-init GD passes, for about a hundredth
of its gradient evaluations, counted by the trainer and by an independent
counter inside the loss. Wall time is not asserted (no timed tests):
`flowgap run saddle-skip` measures it side by side (docs/results/saddle-skip)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgap
from flowgap import dynamics, models, problems
from flowgap.dynamics._saddle_jump import truncated_cg

from .helpers import counting_loss

D, K, N = 6, 4, 60
DECAY = 2.6  # input covariance diag(j^(−2.6)): eigenvalues 1 … 0.0095, two decades
SIZES = (0.5, 0.1)  # tanh teacher's units √s·(u, v): the gap keeps GD's plateau long
LR = 0.2
TARGET = 1e-6  # both trainers stop below this loss


def _tanh_teacher(key):
    """X = √n·Q·diag(j^(−DECAY/2)) (XᵀX/n = diag(j^(−DECAY)) exactly) and
    y = A·tanh(Bx), A = U·diag(√s), B = diag(√s)·Vᵀ in random orientations."""
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (N, D)))
    x = jnp.sqrt(N) * q * jnp.arange(1, D + 1) ** (-DECAY / 2)
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (K, K)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (D, D)))
    root = jnp.sqrt(jnp.asarray(SIZES))
    y = jnp.tanh(x @ (root[:, None] * v[:, :2].T).T) @ (u[:, :2] * root).T
    return problems.RegressionProblem(x, y, None)


def _finished(traj, calls):
    jax.block_until_ready(traj)
    jax.effects_barrier()
    return len(calls)


@pytest.fixture(scope="module")
def runs():
    problem = _tanh_teacher(jax.random.key(0))
    template = models.TwoLayer(
        D, 2, K, activation="tanh", scale=1.0, key=jax.random.key(1)
    )
    net = models.TwoLayer(D, 2, K, activation="tanh", scale=1e-8, key=jax.random.key(1))
    counted, calls = counting_loss(problem.loss)
    skip = dynamics.saddle_skip(
        counted,
        template,
        lr=LR,
        grad_tol=1e-9,
        loss_tol=TARGET,
        stage_steps=100,
        whiten=True,
        newton=True,
    )
    skip_calls = _finished(skip, calls)
    counted, calls = counting_loss(problem.loss)
    gd = flowgap.gradient_descent(
        counted,
        net,
        lr=LR,
        steps=30_000,
        save_every=10,
        stop_when=dynamics.LossBelow(TARGET),
    )
    gd_calls = _finished(gd, calls)
    return dict(problem=problem, skip=skip, gd=gd, calls=(skip_calls, gd_calls))


def test_ten_times_fewer_evaluations(runs):
    skip, gd = runs["skip"], runs["gd"]
    assert skip.result == dynamics.RESULTS.successful
    assert gd.result == dynamics.RESULTS.event_occurred
    skip_evals = int(skip.stats["num_grad_evals"])  # HVPs counted as 2 each
    gd_evals = int(gd.stats["num_grad_evals"])
    assert 10 * skip_evals <= gd_evals, (skip_evals, gd_evals)


def test_counts_equal_an_independent_counter(runs):
    skip, gd = runs["skip"], runs["gd"]
    skip_calls, gd_calls = runs["calls"]
    s = {k: int(v) for k, v in skip.stats.items() if np.ndim(v) == 0}
    # each gradient, product and lone loss (line search) runs the forward pass
    # once; an HVP is counted as 2 gradients
    assert skip_calls == s["num_grad_evals"] - s["num_hvps"] + s["num_loss_evals"]
    assert s["num_hvps"] > 0 and s["num_steps"] > 0  # Newton steps were taken
    assert gd_calls == int(gd.stats["num_grad_evals"]) + int(gd.stats["num_loss_evals"])


def _plateau_passage(problem, gd, saddles):
    """GD's passage of the rank-1 saddle: at its smallest ‖∇L‖ between the
    halfway losses either side of the saddle, (loss − saddle loss, ‖∇L‖, the
    model there)."""
    keep = np.flatnonzero(np.isfinite(np.asarray(gd.loss)))
    saved = jax.tree.map(lambda x: x[keep], gd.models)
    loss = np.asarray(gd.loss)[keep]
    grads = np.asarray(
        jax.vmap(lambda m: optax.tree.norm(jax.grad(problem.loss)(m)))(saved)
    )
    window = (loss < 0.5 * (saddles[0] + saddles[1])) & (
        loss > 0.5 * (saddles[1] + saddles[2])
    )
    i = np.flatnonzero(window)[np.argmin(grads[window])]
    return loss[i] - saddles[1], grads[i], jax.tree.map(lambda x: x[i], saved)


def test_same_saddles_as_small_init_gd(runs):
    """The skipper's rank-1 saddle is a critical point. GD passes a rank-1
    plateau above it and, unlike a linear net, comes no closer from a smaller
    α: both units grow along C's top pair at the same rate σ₁ from α, so the
    second arrives with an O(1) share set by the init's ratio, not by α; for a
    linear net that share is part of one rank-1 map, for tanh it is a second
    unit, and the plateau is not the one-unit saddle (docs: studies/saddle-skip,
    part 3). The goal's 1e-6 is therefore out of reach here, as asserted."""
    problem, skip, gd = runs["problem"], runs["skip"], runs["gd"]
    np.testing.assert_array_equal(skip.stats["saddle_rank"], [0, 1, 2])
    saddles = np.asarray(skip.stats["saddle_loss"])
    rank_one = skip[int(skip.stats["saddle_index"][1])]
    # the Newton stage ended below ‖∇L‖ = 1e-9, one unit in use
    assert optax.tree.norm(jax.grad(problem.loss)(rank_one)) < 1e-9
    assert int(jnp.sum(jnp.any(rank_one.w1 != 0, axis=1))) == 1

    gap, grad, there = _plateau_passage(problem, gd, saddles)
    # the same rank: the linearisation σ'(0)W₂W₁ has one singular value above
    # 1% of the top one (the second unit's share is ~0.1 of the first's, and
    # enters W₂W₁ squared)
    assert flowgap.analysis.numerical_rank(there.w2 @ there.w1, 1e-2) == 1
    units = np.sort(np.linalg.norm(np.asarray(there.w1), axis=1))
    assert units[0] > 0.05 * units[1]  # but two units in use, not one
    # so not the same point: GD passes above the saddle with ‖∇L‖ ≫ 1e-9
    assert gap > 1e-6 and grad > 1e-4

    net = models.TwoLayer(
        D, 2, K, activation="tanh", scale=1e-12, key=jax.random.key(1)
    )
    smaller = flowgap.gradient_descent(
        problem.loss,
        net,
        lr=LR,
        steps=30_000,
        save_every=10,
        stop_when=dynamics.LossBelow(TARGET),
    )
    gap_12, grad_12, _ = _plateau_passage(problem, smaller, saddles)
    # α = 1e-12 instead of 1e-8 shifts GD's first escape by ln(1e4)/(ησ₁) steps
    # and leaves the rank-1 passage nearly as it was: gap and ‖∇L‖ change by
    # under 5% (measured: ~3%), where a linear net's gap shrinks as α → 0
    # (tests/test_saddle_skip_anisotropic.py: within 1e-6 from α = 1e-8)
    assert abs(gap_12 - gap) < 0.05 * gap and abs(grad_12 - grad) < 0.05 * grad


def test_same_final_map(runs):
    problem, skip, gd = runs["problem"], runs["skip"], runs["gd"]
    x, y = problem.inputs, np.asarray(problem.targets)
    fs = np.asarray(jax.vmap(skip.final)(x))
    fg = np.asarray(jax.vmap(gd.final)(x))
    # L = ‖F − Y‖²_F/(2n), so ‖F − Y‖_F/√n = √(2L); the triangle inequality
    # bounds the two maps' distance on the data by √(2L_skip) + √(2L_gd)
    bound = np.sqrt(2 * float(skip.final_loss)) + np.sqrt(2 * float(gd.final_loss))
    assert bound <= 2 * np.sqrt(2 * TARGET)
    assert np.linalg.norm(fs - fg) / np.sqrt(N) <= bound
    # a bound far below the targets' own size: the same map, not two small ones
    assert bound < 0.05 * np.linalg.norm(y) / np.sqrt(N)


def test_truncated_cg_solves_or_stops_at_negative_curvature():
    h = jnp.diag(jnp.asarray([2.0, 1.0, -1.0]))
    # positive definite on b's Krylov space (b ⟂ the negative direction): the
    # solve is H⁻¹b after as many products as distinct eigenvalues (2), exact
    # to round-off
    b = jnp.asarray([1.0, 3.0, 0.0])
    z, products = truncated_cg(lambda p: h @ p, b, 1e-14, 3)
    np.testing.assert_allclose(z, [0.5, 3.0, 0.0], rtol=0, atol=1e-14)
    assert int(products) == 2
    # pᵀHp < 0 at the first direction: −b itself is the descent step
    b = jnp.asarray([0.1, 0.0, 1.0])
    z, products = truncated_cg(lambda p: h @ p, b, 1e-14, 3)
    np.testing.assert_array_equal(z, b)
    assert int(products) == 1
