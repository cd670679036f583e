"""What a gradient-descent run costs: a stopped run stops computing, and the
counters in `stats` equal the evaluations actually executed."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import RESULTS
from flowgap.dynamics import GradNormBelow, LossBelow
from flowgap.models import DiagonalNet
from flowgap.problems import sparse_recovery

from .helpers import quadratic


def _shifted(dim, key, **spectrum):
    """L(θ) = ½θᵀAθ − bᵀθ − min L ≥ 0 (so LossBelow(tol) is a convergence test),
    and A's largest eigenvalue."""
    a, b, loss = quadratic(dim, key, **spectrum)
    floor = loss(jnp.linalg.solve(a, b))
    return (lambda theta: loss(theta) - floor), float(jnp.linalg.eigvalsh(a)[-1])


def _counting(loss):
    """`loss` that records every execution of its forward pass (jax.grad runs the
    forward once per gradient), and the record."""
    calls = []

    def counted(theta):
        jax.debug.callback(lambda _: calls.append(1), theta[0])
        return loss(theta)

    return counted, calls


def _executions(calls, traj) -> int:
    jax.block_until_ready(traj)
    jax.effects_barrier()
    return len(calls)


def _counts(traj):
    return int(traj.stats["num_grad_evals"]), int(traj.stats["num_loss_evals"])


# (guarded by stop_when, save_every): unguarded chunks of several blocks and of
# one block; guarded chunks of several blocks and of one step.
PATHS = [(False, 200), (False, 20), (True, 200), (True, 1)]


@pytest.mark.parametrize("guarded, save_every", PATHS)
def test_counts_of_a_finished_run(key, save_every, guarded):
    loss, _ = _shifted(5, key)
    counted, calls = _counting(loss)
    stop = GradNormBelow(1e-300) if guarded else None  # never fires: ∇L ≠ 0
    traj = flowgap.gradient_descent(
        counted, jnp.zeros(5), lr=0.1, steps=200, save_every=save_every, stop_when=stop
    )
    assert traj.result == RESULTS.successful
    grads, losses = _counts(traj)
    assert grads == 200  # one gradient per step, nothing else
    assert grads + losses == _executions(calls, traj)
    if guarded:
        assert losses == 1  # save values come with the gradients; + L(final)


@pytest.mark.parametrize("save_every", [500, 1])
def test_counts_of_a_run_stopped_by_its_condition(key, save_every):
    loss, _ = _shifted(5, key)
    counted, calls = _counting(loss)
    traj = flowgap.gradient_descent(
        counted,
        jnp.zeros(5),
        lr=0.1,
        steps=500,
        save_every=save_every,
        stop_when=LossBelow(1e-3),
    )
    assert traj.result == RESULTS.event_occurred
    k = int(traj.stats["stop_step"])
    assert 0 < k < 400
    grads, losses = _counts(traj)
    # k steps, and the gradient at θ_k that found L(θ_k) < tol; nothing after
    assert grads == k + 1 and losses == 1
    assert grads + losses == _executions(calls, traj)


@pytest.mark.parametrize(
    "guarded, save_every", [(False, 4000), (False, 100), (True, 100), (True, 1)]
)
def test_counts_of_a_diverging_run(key, save_every, guarded):
    loss, _ = _shifted(4, key, lo=1.0, hi=2.0)
    counted, calls = _counting(loss)
    stop = GradNormBelow(1e-300) if guarded else None
    traj = flowgap.gradient_descent(
        counted, jnp.ones(4), lr=1.5, steps=4000, save_every=save_every, stop_when=stop
    )
    assert traj.result == RESULTS.diverged
    k = int(traj.stats["stop_step"])
    assert 0 < k < 3000
    grads, losses = _counts(traj)
    assert grads + losses == _executions(calls, traj)
    if guarded:
        assert grads == k + 1 and losses == 1  # as for a stop by the condition
    else:
        # The unguarded pass ran to the end of the block of its chunk where θ or
        # L went bad (≤ ⌈√save_every⌉ steps past k), then the chunk was replayed
        # with the per-step guard from its start up to k.
        chunk_start = k - k % save_every
        block = math.isqrt(save_every - 1) + 1 if save_every >= 64 else save_every
        replay = k + 1 - chunk_start
        assert k + replay <= grads <= k + block - 1 + replay


def _best_time(run, repeats=3) -> float:
    jax.block_until_ready(run())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("save_every", [10_000, 10])
def test_a_run_stopped_at_once_costs_almost_nothing(key, save_every):
    """10⁴ steps on a 200-dimensional quadratic (a matrix-vector product per
    step), against the same compiled program stopped at step 0 (a tolerance
    above ‖∇L(θ₀)‖) or diverging at step ~1 (`max_loss` crossed): both are traced
    numbers, so the runs compare like with like."""
    loss, top = _shifted(200, key)
    theta0 = jnp.zeros(200)

    def guarded(tol):
        return flowgap.gradient_descent(
            loss,
            theta0,
            lr=0.5,
            steps=10_000,
            save_every=save_every,
            stop_when=GradNormBelow(tol),
        )

    def plain(lr):
        return flowgap.gradient_descent(
            loss, theta0, lr=lr, steps=10_000, save_every=save_every, max_loss=1e6
        )

    stopped = guarded(1e300)
    assert int(stopped.stats["stop_step"]) == 0
    assert int(stopped.stats["num_grad_evals"]) == 1
    diverged = plain(100.0 / top)  # |1 − ηλ_max| = 99: L grows ~10⁴ per step
    assert diverged.result == RESULTS.diverged
    assert int(diverged.stats["stop_step"]) < 5
    # Measured on 2 busy cores: a full run 0.15-0.2 s, a stopped one 1-3 % of
    # that (a predicate per block of ≈√10⁴ steps or per save, plus, without
    # stop_when, one block and its replay). 0.3 leaves a wide margin for timer
    # noise on a shared machine.
    full = _best_time(lambda: guarded(1e-300))
    assert _best_time(lambda: guarded(1e300)) < 0.3 * full
    full = _best_time(lambda: plain(0.5))
    assert _best_time(lambda: plain(100.0 / top)) < 0.3 * full


def test_derivative_through_a_stopped_run_matches_central_differences():
    """d L(θ_final)/d(η, α) of a DiagonalNet run stopped by LossBelow at step k:
    k is locally constant in (η, α), so the derivative is that of k steps."""
    problem = sparse_recovery(jax.random.key(0), n=4, d=8, sparsity=2)

    @jax.jit
    def final(lr, scale):
        traj = flowgap.gradient_descent(
            problem.loss,
            DiagonalNet(8, scale=scale),
            lr=lr,
            steps=400,
            save_every=100,
            stop_when=LossBelow(1e-2),
        )
        return traj.final_loss, traj.stats["stop_step"]

    point = dict(lr=0.05, scale=0.4)
    value, k = final(**point)
    assert 0 < int(k) < 300
    grads = jax.grad(lambda *x: final(*x)[0], argnums=(0, 1))(*point.values())
    for (name, x), ad in zip(point.items(), grads):
        # As in test_differentiable: h = 1e-4·|x| balances the truncation error
        # h²f'''/6 and the rounding error ε|f|/h near ε^(2/3) relative.
        h = 1e-4 * x
        up, k_up = final(**{**point, name: x + h})
        down, k_down = final(**{**point, name: x - h})
        assert int(k_up) == int(k_down) == int(k)  # the same k steps
        fd = (up - down) / (2 * h)
        assert abs(ad - fd) <= 1e-6 * abs(fd), (name, float(ad), float(fd))


def test_vmapped_runs_stop_each_at_its_own_step(key):
    """Under vmap the loop runs while any run is active; each run still stops
    at its own step and equals its solo run."""
    loss, _ = _shifted(4, key)
    tols = jnp.array([1e-1, 1e-2, 1e-3, 1e-300])

    def run(tol):
        return flowgap.gradient_descent(
            loss,
            jnp.zeros(4),
            lr=0.2,
            steps=300,
            save_every=100,
            stop_when=GradNormBelow(tol),
        )

    batched = jax.vmap(run)(tols)
    for i, tol in enumerate(tols):
        solo = run(tol)
        assert int(batched.stats["stop_step"][i]) == int(solo.stats["stop_step"])
        # Same operations, batched: equal up to reassociation in the batched matvec.
        assert np.allclose(batched.final[i], solo.final, rtol=1e-13, atol=1e-15)
    # every run of the batch is evaluated while any run is active: the last
    # run (never stopped) sets everyone's count
    assert np.all(np.asarray(batched.stats["num_grad_evals"]) == 300)
