import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

import flowgap
from flowgap import RESULTS
from flowgap.dynamics import LossBelow, SolverError
from flowgap.models import DiagonalNet
from flowgap.problems import RegressionProblem, whitened

from .helpers import Linear


def _least_squares(key, n=30, d=5):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d))
    y = jax.random.normal(ky, (n,))
    return RegressionProblem(x, y)


def _exact(problem, w0, t, p):
    """GF on (1/2n)‖Xw − y‖²: w(t) = w* + expm(−tPA)(w₀ − w*), A = XᵀX/n."""
    x, y = problem.inputs, problem.targets
    a = x.T @ x / problem.n
    star = jnp.linalg.solve(a, x.T @ y / problem.n)
    return star + expm(-t * p[:, None] * a) @ (w0 - star)


@pytest.mark.parametrize("precondition", [False, True])
def test_gf_matches_matrix_exponential(key, precondition):
    problem = _least_squares(key)
    w0 = jnp.linspace(-1, 1, 5)
    p = jnp.array([1.0, 2.0, 0.5, 1.5, 1.0]) if precondition else jnp.ones(5)
    ts = jnp.linspace(0, 4, 9)
    traj = flowgap.gradient_flow(
        problem.loss,
        Linear(w0),
        t1=4.0,
        ts=ts,
        rates=Linear(p) if precondition else None,
        rtol=1e-12,
        atol=1e-12,
    )
    assert traj.result == RESULTS.successful
    for i, t in enumerate(ts):
        # Tsit5 at rtol = atol = 1e-12: global error ≲ 1e-10 ≪ the 1e-8 required.
        assert np.allclose(traj[i].w, _exact(problem, w0, t, p), rtol=0, atol=1e-8)
    assert np.allclose(traj.final.w, traj[-1].w, atol=0)
    assert float(traj.stop_time) == 4.0


def test_whitened_flow_is_exponential(key):
    problem = whitened(key, n=20, d=4)  # A = I: w(t) = w* + e^{−t}(w₀ − w*)
    traj = flowgap.gradient_flow(
        problem.loss, Linear(jnp.zeros(4)), t1=3.0, rtol=1e-12, atol=1e-12
    )
    expected = problem.truth * (1 - np.exp(-3.0))
    assert np.allclose(traj.final.w, expected, atol=1e-10)


def test_failed_flow_keeps_partial_trajectory(key):
    problem = _least_squares(key)
    ts = jnp.linspace(0, 50, 51)
    traj = flowgap.gradient_flow(
        problem.loss, Linear(jnp.zeros(5)), t1=50.0, ts=ts, max_steps=20, throw=False
    )
    assert traj.result == RESULTS.max_steps_reached
    stop = float(traj.stop_time)
    assert 0 < stop < 50
    done = np.asarray(ts) <= stop
    assert done.sum() >= 2 and np.all(np.isfinite(traj.loss[done]))
    assert np.all(np.isinf(traj.loss[~done]))
    # the state at the failure time is the exact flow there, to tolerance
    exact = _exact(problem, jnp.zeros(5), stop, jnp.ones(5))
    assert np.allclose(traj.final.w, exact, atol=1e-6)
    with pytest.raises(SolverError, match="max_steps.*Kvaerno5") as err:
        flowgap.gradient_flow(
            problem.loss, Linear(jnp.zeros(5)), t1=50.0, max_steps=20, throw=True
        )
    assert "stopped at t = " in str(err.value) and err.value.trajectory is not None


def test_stop_when_event_ends_the_flow(key):
    problem = whitened(key, n=20, d=4)
    truth_loss = 0.5 * jnp.sum(problem.truth**2)
    traj = flowgap.gradient_flow(
        problem.loss,
        Linear(jnp.zeros(4)),
        t1=100.0,
        stop_when=LossBelow(1e-6),
        rtol=1e-10,
        atol=1e-12,
    )
    assert traj.result == RESULTS.event_occurred
    # L(t) = e^{−2t} L(0) exactly, so it crosses 1e-6 at t* = ½ ln(L(0)/1e-6);
    # a boolean event stops at the end of the first step past t*.
    t_star = 0.5 * np.log(float(truth_loss) / 1e-6)
    assert t_star <= float(traj.stop_time) < t_star + 1.0
    assert float(traj.final_loss) < 1e-6
    assert traj.successful


def test_stiff_solver_option(key):
    problem = _least_squares(key)
    traj = flowgap.gradient_flow(
        problem.loss,
        Linear(jnp.zeros(5)),
        t1=2.0,
        solver=diffrax.Kvaerno5(),
        rtol=1e-10,
        atol=1e-10,
    )
    assert np.allclose(
        traj.final.w, _exact(problem, jnp.zeros(5), 2.0, jnp.ones(5)), atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(t1=0.0), "t1"),
        (dict(t1=-1.0), "t1"),
        (dict(t1=1.0, ts=jnp.array([0.5, 1.0])), "ts"),
        (dict(t1=1.0, ts=jnp.array([0.0, 2.0])), "ts"),
        (dict(t1=1.0, ts=jnp.array([0.0, 0.6, 0.3])), "ts"),
        (dict(t1=1.0, rtol=0.0), "rtol"),
        (dict(t1=1.0, max_steps=0), "max_steps"),
        (dict(t1=1.0, solver="tsit5"), "solver"),
        (dict(t1=1.0, rates=DiagonalNet(3, scale=1.0)), "rates"),
        (dict(t1=1.0, stop_when=1e-3), "stop_when"),
    ],
)
def test_bad_input(key, kwargs, name):
    problem = _least_squares(key)
    # our own checks name the argument in backticks; the test-time jaxtyping hook
    # rejects a wrongly typed annotated argument first, naming it in quotes
    with pytest.raises((ValueError, TypeError), match=f"[`']{name}[`']"):
        flowgap.gradient_flow(problem.loss, Linear(jnp.zeros(5)), **kwargs)


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), diffrax.Dopri8(), diffrax.Heun()], ids=str
)
def test_gradient_evaluation_count_is_exact(key, solver):
    """stats['num_grad_evals'] against a runtime counter inside the loss."""
    from flowgap.problems import sparse_recovery

    problem = sparse_recovery(key, n=10, d=30, sparsity=2)
    calls = []

    def loss(model):
        jax.debug.callback(lambda _: calls.append(1), model.u[0])
        return problem.loss(model)

    traj = flowgap.gradient_flow(
        loss,
        DiagonalNet(30, scale=1e-3),
        t1=300.0,
        solver=solver,
        rtol=1e-6,
        atol=1e-9,
        max_steps=10**6,
    )
    jax.block_until_ready(traj)
    assert int(traj.stats["num_rejected_steps"]) > 0  # rejections are counted too
    saves_and_final = len(traj) + 1  # L at each save and at the end
    assert int(traj.stats["num_grad_evals"]) == len(calls) - saves_and_final
