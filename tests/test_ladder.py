"""GD at a ladder of learning rates to one horizon, in one compiled program
(`flowgap.dynamics.ladder_descent`): each rate's trajectory is the solo
run of its own K = t1/η steps."""

import numpy as np
import pytest

import flowgap
from flowgap.dynamics import ladder_descent
from flowgap.models import DiagonalNet, PolarDiagonalNet
from flowgap.problems import sparse_recovery

from .helpers import tree_distance

LRS = (0.04, 0.02, 0.01)  # 25, 50, 100 steps to t1 = 1
T1, SAVES = 1.0, 5


def _problem(key):
    return sparse_recovery(key, n=10, d=20, sparsity=2)


def test_each_rate_is_its_solo_run_from_one_program(key):
    problem = _problem(key)
    model = DiagonalNet(20, scale=0.1)
    traces = []

    def loss(m):
        traces.append(1)
        return problem.loss(m)

    ladder = ladder_descent(loss, model, LRS[:1], T1, SAVES)
    first = len(traces)
    ladder = ladder_descent(loss, model, LRS, T1, SAVES)
    # the loss is traced for the first rate only: every rate shares its program
    assert len(traces) == 2 * first
    for lr, run in ladder.items():
        steps = round(T1 / lr)
        solo = flowgap.gradient_descent(
            problem.loss, model, lr=lr, steps=steps, save_every=steps // SAVES
        )
        # the frozen steps move nothing (+0.0): θ bit for bit; L at the saves
        # evaluated in another program (round-off)
        assert np.allclose(run.ts, solo.ts, rtol=1e-15, atol=0)
        assert float(run.ts[-1]) == pytest.approx(T1, rel=1e-14)
        assert tree_distance(run.models, solo.models) == 0.0
        assert tree_distance(run.final, solo.final) == 0.0
        assert np.allclose(run.loss, solo.loss, rtol=1e-13, atol=0)
        assert np.isclose(run.final_loss, solo.final_loss, rtol=1e-13, atol=0)
        assert float(run.stop_time) == pytest.approx(T1, rel=1e-14)
        assert run.result == flowgap.RESULTS.successful


def test_rates_with_coprime_strides_run_alone(key):
    """Save strides 3 and 2 share only single steps: each rate runs its own
    program of K steps, as a solo run."""
    problem = _problem(key)
    model = DiagonalNet(20, scale=0.1)
    ladder = ladder_descent(problem.loss, model, (0.02, 0.03), 0.06)
    for lr, steps in ((0.02, 3), (0.03, 2)):
        solo = flowgap.gradient_descent(
            problem.loss, model, lr=lr, steps=steps, save_every=steps
        )
        assert len(ladder[lr]) == 2
        assert tree_distance(ladder[lr].models, solo.models) == 0.0
        assert float(ladder[lr].final_loss) == float(solo.final_loss)


def test_a_projection_is_not_applied_after_the_rates_own_steps(key):
    """The polar net's rPGD projection runs after every step of the padded
    program; `final` is the save at K, before any frozen step."""
    problem = _problem(key)
    model = PolarDiagonalNet(20, scale=0.1)
    options = dict(rates=model.rates(2.0), projection=PolarDiagonalNet.normalised)
    ladder = ladder_descent(problem.loss, model, LRS, T1, SAVES, **options)
    for lr, run in ladder.items():
        steps = round(T1 / lr)
        solo = flowgap.gradient_descent(
            problem.loss,
            model,
            lr=lr,
            steps=steps,
            save_every=steps // SAVES,
            **options,
        )
        # round-off: the projection's norm, fused differently in another program
        assert tree_distance(run.models, solo.models) < 1e-14
        assert tree_distance(run.final, solo.final) < 1e-14


def test_a_divergent_rate_keeps_where_it_stopped(key):
    """A run that diverges before its own K stops where its solo run does."""
    problem = _problem(key)
    model = DiagonalNet(20, scale=1.0)
    run = ladder_descent(problem.loss, model, (1.0, 0.5), 8.0, 2)[1.0]
    solo = flowgap.gradient_descent(problem.loss, model, lr=1.0, steps=8, save_every=4)
    assert run.result == solo.result == flowgap.RESULTS.diverged
    stop = int(run.stats["stop_step"])
    assert 0 < stop < 8 and stop == int(solo.stats["stop_step"])
    assert float(run.stop_time) == float(solo.stop_time) == stop
    assert np.array_equal(run.loss, solo.loss)  # inf after the stop


def test_a_rate_that_misses_the_horizon_is_refused(key):
    problem = _problem(key)
    with pytest.raises(ValueError, match="`lrs`.*lr = 0.03"):
        ladder_descent(
            problem.loss, DiagonalNet(20, scale=0.1), (0.01, 0.03), T1, SAVES
        )
    with pytest.raises(ValueError, match="`saves`"):
        ladder_descent(problem.loss, DiagonalNet(20, scale=0.1), (0.01,), T1, 3)
