"""The plateau-skipping trainer (docs: theory/saddle-to-saddle): same saddles as
small-init GD,
GLRL's Eckart–Young iterates, far fewer gradient evaluations, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import dynamics, models, problems

# Well-separated (ratio 4): GD from α passes saddle r within ~α^{2(1 − s_{r+1}/s_r)}
# in loss, 1e-12 at α = 1e-8.
SINGULAR = jnp.array([4.0, 1.0, 0.25, 0.1])


def _whitened_teacher(key, *, n=60, d=6, k=4):
    """XᵀX/n = I exactly and y = W*x with W* = U diag(4, 1, 0.25, 0.1) Vᵀ: the
    rank-r saddle is W*'s best rank-r truncation, at loss ½ Σ_{j>r} s_j²."""
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (n, d)))
    x = jnp.sqrt(n) * q
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (k, k)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (d, d)))
    truth = u @ jnp.diag(SINGULAR) @ v[:, :k].T
    return problems.RegressionProblem(x, x @ truth.T, truth)


def _rank(matrix, rel=1e-3):
    s = np.linalg.svd(np.asarray(matrix), compute_uv=False)
    return int(np.sum(s > rel * s[0])) if s[0] > 0 else 0


def _gd_saddles(problem, traj, saddle_losses):
    """For each saddle loss ℓ of the skipper, the GD save with the smallest
    gradient norm among saves whose loss lies half-way to the neighbouring
    saddle losses: where GD passes the saddle. Returns (losses, ranks of W₂W₁)."""
    grad_norm = jax.vmap(
        lambda m: jnp.sqrt(
            sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(problem.loss)(m)))
        )
    )(traj.models)
    loss, grad_norm = np.asarray(traj.loss), np.asarray(grad_norm)
    found_loss, found_rank = [], []
    for r in range(1, len(saddle_losses) - 1):
        above = 0.5 * (saddle_losses[r - 1] + saddle_losses[r])
        below = 0.5 * (saddle_losses[r] + saddle_losses[r + 1])
        window = (loss < above) & (loss > below)
        i = np.flatnonzero(window)[np.argmin(grad_norm[window])]
        found_loss.append(loss[i])
        found_rank.append(_rank(traj[i].w2 @ traj[i].w1))
    return np.asarray(found_loss), found_rank


def test_same_saddles_and_solution_as_small_init_gd(key):
    problem = _whitened_teacher(key)
    net = models.TwoLayer(6, 3, 4, activation="linear", scale=1e-8, key=key)
    skip = dynamics.saddle_skip(problem.loss, net, lr=0.2, jump=1e-2, grad_tol=1e-9)
    assert skip.result == dynamics.RESULTS.successful
    saddle_loss = np.asarray(skip.stats["saddle_loss"])
    # Eckart–Young: rank-r saddle loss ½ Σ_{j>r} s_j² (whitened inputs); the
    # stage ends at ‖∇L‖ < 1e-9, so the loss is off by O(‖∇L‖²) ≪ 1e-12.
    exact = [0.5 * float(jnp.sum(SINGULAR[r:] ** 2)) for r in range(4)]
    np.testing.assert_allclose(saddle_loss, exact, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(skip.stats["saddle_rank"], [0, 1, 2, 3])
    for i, r in zip(np.asarray(skip.stats["saddle_index"]), range(4)):
        assert _rank(skip[int(i)].w2 @ skip[int(i)].w1) == r
    np.testing.assert_allclose(skip.stats["saddle_eigenvalue"], SINGULAR, atol=1e-8)

    gd = flowgap.gradient_descent(problem.loss, net, lr=0.2, steps=2000)
    gd_loss, gd_rank = _gd_saddles(problem, gd, saddle_loss)
    # From α = 1e-8 GD passes each saddle within ~α^c; the issue asks for the
    # same saddles to 1e-6 in loss and the same ranks.
    np.testing.assert_allclose(gd_loss, saddle_loss[1:-1], rtol=0, atol=1e-6)
    assert gd_rank == [1, 2]
    # Same final end-to-end map: the best rank-3 approximation of W* (the
    # limit of both; both within ~‖∇L‖/gap of it).
    u, s, vt = np.linalg.svd(np.asarray(problem.truth))
    best3 = (u[:, :3] * s[:3]) @ vt[:3]
    np.testing.assert_allclose(skip.final.w2 @ skip.final.w1, best3, atol=1e-8)
    np.testing.assert_allclose(gd.final.w2 @ gd.final.w1, best3, atol=1e-6)
    assert abs(float(skip.final_loss) - float(gd.final_loss)) < 1e-6


def test_ten_times_fewer_gradient_evaluations_at_alpha_1e8(key):
    problem = _whitened_teacher(key)
    net = models.TwoLayer(6, 3, 4, activation="linear", scale=1e-8, key=key)
    skip = dynamics.saddle_skip(
        problem.loss, net, lr=0.2, grad_tol=1e-9, line_search=True
    )
    target = float(skip.final_loss) + 1e-7
    gd = flowgap.gradient_descent(
        problem.loss,
        net,
        lr=0.2,
        steps=4000,
        save_every=4000,
        stop_when=dynamics.LossBelow(target),
    )
    assert gd.result == dynamics.RESULTS.event_occurred
    assert abs(float(gd.final_loss) - float(skip.final_loss)) < 1e-6
    skip_evals = int(skip.stats["num_grad_evals"])
    gd_evals = int(gd.stats["num_grad_evals"])
    assert 10 * skip_evals <= gd_evals, (skip_evals, gd_evals)
    # The clock counts gradient evaluations: the last save is the last landing,
    # whose probe (L, C and ‖∇L‖ in one gradient) is the final stopping test.
    assert float(skip.stop_time) == skip_evals
    assert float(skip.ts[-1]) == skip_evals


def test_glrl_rounds_are_eckart_young_truncations(key):
    """Matrix factorisation L(W) = ½‖W − W*‖²_F/d (X = I) on a depth-2
    DeepLinear: round r of GLRL ends at the best rank-r approximation of W*."""
    d, k, h = 5, 4, 4
    ku, kv = jax.random.split(key)
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (k, k)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (d, d)))
    singular = jnp.array([4.0, 3.0, 2.0, 1.0])
    truth = u @ jnp.diag(singular) @ v[:, :k].T
    problem = problems.RegressionProblem(jnp.eye(d), truth.T, truth)
    net = models.DeepLinear((d, h, k), scale=0.1, key=key)
    grad_tol = 1e-11
    traj = dynamics.saddle_skip(
        problem.loss, net, lr=1.0, jump=1e-3, grad_tol=grad_tol, max_rounds=3
    )
    assert int(traj.stats["num_rounds"]) == 3
    for r, i in enumerate(np.asarray(traj.stats["saddle_index"])):
        product = traj[int(i)].end_to_end()
        best = (u[:, :r] * singular[:r]) @ v[:, :r].T
        # ∇_W L = (W − W*)/d; within a stage the restricted loss is strongly
        # convex with modulus ≥ gap/d (gap = s_r − s_{r+1} = 1), so
        # ‖W − W_r‖ ≤ d·‖∇L‖/gap ≲ 5e-11; 1e-9 leaves 20× for the factors.
        np.testing.assert_allclose(product, best, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        traj.stats["saddle_eigenvalue"], singular[:4] / d, rtol=1e-9
    )


def test_tanh_coefficient_matrix_is_the_linearisation(key):
    """At the origin of a tanh net, C = σ'(0)·(1/n)YᵀX with tanh'(0) = 1; the
    first eigenvalue is its top singular value, and the first stage descends."""
    problem = problems.teacher_student(
        key, n=40, d=5, teacher_width=2, out_dim=2, activation="tanh"
    )
    net = models.TwoLayer(5, 4, 2, activation="tanh", scale=1.0, key=key)
    traj = dynamics.saddle_skip(
        problem.loss, net, lr=0.2, grad_tol=1e-5, stage_steps=500, max_rounds=1
    )
    cross = problem.targets.T @ problem.inputs / problem.n
    top = np.linalg.svd(np.asarray(cross), compute_uv=False)[0]
    # Same matrix by autodiff and by formula: equal to round-off.
    np.testing.assert_allclose(traj.stats["saddle_eigenvalue"][0], top, rtol=1e-12)
    assert float(traj.loss[-1]) < float(traj.loss[0])


@pytest.mark.parametrize("jump", [0.0, -1e-2, float("nan")])
def test_bad_jump(jump, key):
    problem = _whitened_teacher(key)
    net = models.TwoLayer(6, 3, 4, activation="linear", scale=1e-3, key=key)
    with pytest.raises(ValueError, match="`jump`"):
        dynamics.saddle_skip(problem.loss, net, lr=0.2, jump=jump)


def test_bad_model(key):
    problem = _whitened_teacher(key)
    relu = models.TwoLayer(6, 3, 4, activation="relu", scale=1e-3, key=key)
    with pytest.raises(ValueError, match="`model`"):
        dynamics.saddle_skip(problem.loss, relu, lr=0.2)
    with pytest.raises(TypeError, match="`model`"):
        dynamics.saddle_skip(problem.loss, models.DiagonalNet(6, scale=0.1), lr=0.2)
    net = models.TwoLayer(6, 3, 4, activation="linear", scale=1e-3, key=key)
    with pytest.raises(ValueError, match="`max_rounds`"):
        dynamics.saddle_skip(problem.loss, net, lr=0.2, max_rounds=4)
