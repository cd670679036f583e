"""The plateau-skipping trainer on anisotropic inputs (docs: studies/saddle-skip):
the whitened jump lands on every saddle, so it costs tens of gradient evaluations
where small-init GD costs thousands, counted by the trainer and by an
independent counter inside the loss. Wall time is not asserted here (no timed
tests): `flowgap run saddle-skip` measures GD and the skipper side by side in
one run and reports the ratio (docs/results/saddle-skip)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgap
from flowgap import dynamics, models, problems

from .helpers import counting_loss

D, K, N = 6, 4, 60
DECAY = 2.6  # input covariance diag(j^(−2.6)): eigenvalues 1 … 0.0095, two decades
SINGULAR = (4.0, 0.25)  # rank-2 teacher; the gap 16 keeps GD's plateau long
LR = 0.2


def _anisotropic_teacher(key):
    """X = √n·Q·diag(j^(−DECAY/2)), so XᵀX/n = Σ = diag(j^(−DECAY)) exactly, and
    y = W*x with W* = U diag(SINGULAR) Vᵀ in random orientations."""
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (N, D)))
    x = jnp.sqrt(N) * q * jnp.arange(1, D + 1) ** (-DECAY / 2)
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (K, K)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (D, D)))
    truth = (u[:, :2] * jnp.asarray(SINGULAR)) @ v[:, :2].T
    return problems.RegressionProblem(x, x @ truth.T, truth)


def _reduced_rank_losses(problem):
    """½ Σ_{i>r} s_i², s_i the singular values of W*Σ^{1/2} (reduced-rank
    regression in closed form, numpy only): the loss at the rank-r saddle."""
    x, truth = np.asarray(problem.inputs), np.asarray(problem.truth)
    lam, basis = np.linalg.eigh(x.T @ x / N)
    s = np.linalg.svd(truth @ basis @ np.diag(np.sqrt(lam)) @ basis.T, compute_uv=False)
    return [0.5 * float(np.sum(s[r:] ** 2)) for r in range(3)], float(lam[0])


@pytest.fixture(scope="module")
def runs():
    problem = _anisotropic_teacher(jax.random.key(0))
    template = models.TwoLayer(
        D, 2, K, activation="linear", scale=1.0, key=jax.random.key(1)
    )
    net = models.TwoLayer(
        D, 2, K, activation="linear", scale=1e-8, key=jax.random.key(1)
    )
    skip = dynamics.saddle_skip(
        problem.loss, template, lr=LR, grad_tol=1e-9, whiten=True
    )
    # L ≥ ½λ_min‖W − W*‖²_F, so L < 1e-10 puts GD's map within 1.5e-4 of W*
    gd = flowgap.gradient_descent(
        problem.loss,
        net,
        lr=LR,
        steps=30_000,
        save_every=30_000,
        stop_when=dynamics.LossBelow(1e-10),
    )
    return dict(problem=problem, template=template, net=net, skip=skip, gd=gd)


def test_ten_times_fewer_evaluations(runs):
    skip, gd = runs["skip"], runs["gd"]
    assert skip.result == dynamics.RESULTS.successful
    assert gd.result == dynamics.RESULTS.event_occurred
    skip_evals = int(skip.stats["num_grad_evals"])  # HVPs counted as 2 each
    gd_evals = int(gd.stats["num_grad_evals"])
    assert 10 * skip_evals <= gd_evals, (skip_evals, gd_evals)


def test_counts_equal_an_independent_counter(runs):
    problem = runs["problem"]
    counted, calls = counting_loss(problem.loss)
    skip = dynamics.saddle_skip(
        counted, runs["template"], lr=LR, grad_tol=1e-9, whiten=True
    )
    jax.block_until_ready(skip)
    jax.effects_barrier()
    s = {k: int(v) for k, v in skip.stats.items() if np.ndim(v) == 0}
    # each gradient, product and lone loss runs the forward pass once
    assert len(calls) == s["num_grad_evals"] - s["num_hvps"] + s["num_loss_evals"]
    assert s["num_hvps"] > 0
    assert s["num_grad_evals"] == int(runs["skip"].stats["num_grad_evals"])

    counted, calls = counting_loss(problem.loss)
    gd = flowgap.gradient_descent(
        counted,
        runs["net"],
        lr=LR,
        steps=30_000,
        save_every=30_000,
        stop_when=dynamics.LossBelow(1e-10),
    )
    jax.block_until_ready(gd)
    jax.effects_barrier()
    assert len(calls) == int(gd.stats["num_grad_evals"]) + int(
        gd.stats["num_loss_evals"]
    )


def test_same_saddles_as_small_init_gd(runs):
    problem, skip = runs["problem"], runs["skip"]
    exact, _ = _reduced_rank_losses(problem)
    # the jump lands on the reduced-rank solution; CG leaves a residual of
    # ~1e-14·‖C‖, so the loss is exact to round-off (≪ 1e-12)
    np.testing.assert_allclose(skip.stats["saddle_loss"], exact, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(skip.stats["saddle_rank"], [0, 1, 2])
    # every stage ended where it landed: no GD step was needed
    np.testing.assert_array_equal(skip.stats["stage_steps"], [0, 0])

    gd = flowgap.gradient_descent(problem.loss, runs["net"], lr=LR, steps=6000)
    grad_norm = np.asarray(
        jax.vmap(lambda m: optax.tree.norm(jax.grad(problem.loss)(m)))(gd.models)
    )
    loss = np.asarray(gd.loss)
    assert loss[-1] < 0.5 * (exact[1] + exact[2])  # GD has left the plateau
    # GD passes the rank-1 saddle where its gradient is smallest between the
    # neighbouring saddle losses
    window = (loss < 0.5 * (exact[0] + exact[1])) & (loss > 0.5 * (exact[1] + exact[2]))
    i = np.flatnonzero(window)[np.argmin(grad_norm[window])]
    assert abs(loss[i] - exact[1]) < 1e-6
    assert flowgap.analysis.numerical_rank(gd[int(i)].w2 @ gd[int(i)].w1, 1e-3) == 1


def test_same_final_map(runs):
    problem, skip, gd = runs["problem"], runs["skip"], runs["gd"]
    _, smallest = _reduced_rank_losses(problem)
    truth = np.asarray(problem.truth)
    # the skipper lands on W* (realisable teacher) up to CG's residual
    np.testing.assert_allclose(skip.final.w2 @ skip.final.w1, truth, rtol=0, atol=1e-10)
    # L = ½‖(W − W*)Σ^{1/2}‖²_F ≥ ½λ_min‖W − W*‖²_F bounds GD's distance
    bound = np.sqrt(2 * float(gd.final_loss) / smallest)
    assert bound < 2e-4
    distance = np.linalg.norm(np.asarray(gd.final.w2 @ gd.final.w1) - truth)
    assert distance <= bound
    assert (
        np.linalg.norm(np.asarray(skip.final.w2 @ skip.final.w1) - truth) < 1e-3 * bound
    )
