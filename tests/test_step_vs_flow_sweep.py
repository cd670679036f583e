"""`flowgap sweep step-vs-flow` compares like with like: every lr is compared with
the flow at the one horizon T = t1, on the clock t = kη, in one compiled program;
a run whose gap is O(1) is flagged apart from the failed ones."""

import jax
import numpy as np
import pytest

import flowgap
from flowgap.experiments import EXPERIMENTS
from flowgap.experiments._settings import SettingError, resolve
from flowgap.experiments._step_vs_flow import run as run_job
from flowgap.experiments._step_vs_flow_sweep import LEFT_FLOW
from flowgap.sweeps import sweep

EXPERIMENT = EXPERIMENTS["step-vs-flow"]
QUICK = resolve(EXPERIMENT.settings, EXPERIMENT.quick)  # t1 = 4
LRS = (0.01, 0.02, 0.04, 0.1)  # t1/lr = 400, 200, 100, 40 steps


def _settings(lrs=LRS, **changes):
    return EXPERIMENT.sweep.settings_for({**QUICK, **changes}, {"lr": np.array(lrs)})


def test_every_lr_ends_at_the_horizon_in_one_program():
    """Each lr's GD endpoint is θ after exactly t1/lr steps (the solo run of that
    many steps, bit for bit), at time t1 — though the program runs 400 steps for
    every lr, compiled once for the grid."""
    settings = _settings()
    assert settings["max_steps"] == 400
    result = sweep(
        lambda scale, lr: EXPERIMENT.sweep.point(
            settings, key=jax.random.key(0), scale=scale, lr=lr
        ),
        {"scale": [0.01], "lr": list(LRS)},
        progress=False,
    )
    assert np.allclose(result.values["time"], QUICK["t1"], rtol=1e-15, atol=0)
    problem = flowgap.problems.sparse_recovery(
        jax.random.key(0), n=QUICK["n"], d=QUICK["d"], sparsity=QUICK["sparsity"]
    )
    net = flowgap.models.DiagonalNet(QUICK["d"], depth=QUICK["depth"], scale=0.01)
    for j, lr in enumerate(LRS):
        steps = round(QUICK["t1"] / lr)
        solo = flowgap.gradient_descent(problem.loss, net, lr=lr, steps=steps)
        # vmapped vs solo: the batched matvec may reassociate (round-off)
        assert np.isclose(result.values["final_loss"][0, j], solo.final_loss, 1e-12)
        # a horizon of steps·lr with the old fixed 400 steps would differ by O(1)
        longer = flowgap.gradient_descent(problem.loss, net, lr=lr, steps=400)
        if steps < 400:
            assert not np.isclose(longer.final_loss, solo.final_loss, rtol=1e-3)


def test_point_is_the_run_jobs_plain_net_bit_for_bit():
    """The sweep point and `flowgap run` share the science: at the same settings,
    seed and lr, `point` gives the run's plain-net numbers bit for bit, for every
    lr of the ladder (each stopped at its own K inside the longest run)."""
    lrs = QUICK["lrs"]  # 0.04, 0.02, 0.01
    settings = _settings(lrs)
    done = run_job(QUICK, seed=0, progress=False)
    rows = {row["clock"]: row for row in done.rows if row["model"] == "plain"}
    for lr in lrs:
        row = rows[f"GD lr={lr:g}"]
        out = EXPERIMENT.sweep.point(
            settings, key=jax.random.key(0), scale=QUICK["scale"], lr=lr
        )
        assert float(out["time"]) == QUICK["t1"]
        assert float(out["gap"]) == row["gap"]
        assert float(out["final_loss"]) == row["final_loss"]
        assert float(out["recovery_error"]) == row["recovery_error"]
        assert float(out["flow_recovery_error"]) == rows["GF"]["recovery_error"]


@pytest.mark.parametrize(
    "scale, lr, left",
    [
        (0.1, 0.01, False),  # GD tracks the flow: relative gap ≈ 3e-3
        (0.1, 0.5, True),  # 8 steps of 0.5 land O(1) away (relative gap ≈ 1.5)
        (1.0, 0.1, True),  # finite loss, status ok, yet far from the flow
    ],
)
def test_left_flow_flags_an_order_one_gap(scale, lr, left):
    out = EXPERIMENT.sweep.point(
        _settings((0.01, 0.1, 0.5)), key=jax.random.key(0), scale=scale, lr=lr
    )
    assert int(out["status"]) == 0  # succeeded: the flag is not a failure
    assert bool(out["left_flow"]) is left
    relative = float(out["relative_gap"])
    # far from the threshold either way, so the flag does not hinge on it
    assert relative > 5 * LEFT_FLOW if left else relative < LEFT_FLOW / 5


def test_a_grid_that_misses_the_horizon_is_refused():
    with pytest.raises(SettingError, match="`--grid` axis `lr`.*lr = 0.03"):
        _settings((0.01, 0.03))
    with pytest.raises(SettingError, match="--grid lr="):
        EXPERIMENT.sweep.settings_for(QUICK, {"scale": np.array([0.1])})
