"""GD is the explicit Euler method of GF: at a fixed time T, ‖θ_GD − θ_GF‖ = O(η)."""

import diffrax
import numpy as np
import pytest

import flowgap
from flowgap.analysis import loglog_slope
from flowgap.models import DeepLinear, DiagonalNet, TwoLayer
from flowgap.problems import low_rank, sparse_recovery, teacher_student

from .helpers import tree_distance

T = 2.0
DIVISIONS = np.array([80, 160, 320, 640])  # K = T/η steps; η ≤ 0.025


def _cases(key):
    return {
        "diagonal": (
            sparse_recovery(key, n=10, d=30, sparsity=2),
            DiagonalNet(30, scale=0.5),
        ),
        "deep-linear": (
            low_rank(key, d_in=4, d_out=3, rank=1),
            DeepLinear((4, 5, 3), scale=0.5, key=key),
        ),
        "tanh-two-layer": (
            teacher_student(key, n=20, d=4, teacher_width=3, activation="tanh"),
            TwoLayer(4, 6, 1, activation="tanh", scale=0.5, key=key),
        ),
    }


@pytest.mark.parametrize("name", ["diagonal", "deep-linear", "tanh-two-layer"])
def test_gap_is_first_order(key, name):
    problem, model = _cases(key)[name]
    # Dopri8 at 1e-12 makes the reference error ~1e-11, far below the smallest gap.
    flow = flowgap.gradient_flow(
        problem.loss, model, t1=T, solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12
    )
    lrs = T / DIVISIONS
    gaps = []
    for steps, lr in zip(DIVISIONS.tolist(), lrs):
        gd = flowgap.gradient_descent(
            problem.loss, model, lr=lr, steps=steps, save_every=steps
        )
        assert float(gd.ts[-1]) == pytest.approx(T, rel=1e-14)  # one clock
        gaps.append(tree_distance(gd.final, flow.final))
    fit = loglog_slope(lrs, gaps)
    assert 0.9 <= fit["slope"] <= 1.1, fit
    # Richardson check: halving η halves the gap to within the O(η²) remainder.
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all(np.abs(ratios - 2) < 0.15), ratios


def test_flow_saved_on_the_gd_clock(key):
    """Saving GF at GD's times tₖ = kη gives the flow at those times: each save
    equals a separate solve to t1 = tₖ (both at 1e-12, so agreement ~1e-10)."""
    problem, model = _cases(key)["diagonal"]
    gd = flowgap.gradient_descent(problem.loss, model, lr=0.05, steps=40, save_every=8)
    flow = flowgap.gradient_flow(
        problem.loss, model, t1=2.0, ts=gd.ts, rtol=1e-12, atol=1e-12
    )
    assert np.array_equal(flow.ts, gd.ts)
    for i in (1, 3, 5):
        alone = flowgap.gradient_flow(
            problem.loss, model, t1=gd.ts[i], rtol=1e-12, atol=1e-12
        )
        assert tree_distance(flow[i], alone.final) < 1e-9


def test_gap_study_fits_only_resolved_gaps():
    # gaps 0.3·η² above the resolution, two below it at round-off level: the fit
    # uses the resolved ones (exact slope 2); with all resolved, the study keeps
    # gap_exponent's own fit, so float64 results are unchanged
    from flowgap.experiments._gap import _resolved_fit

    lrs = np.array([0.05, 0.025, 0.0125, 0.00625])
    gaps = np.array([7.5e-4, 1.875e-4, 3e-6, 2e-6])
    resolved = gaps > 1e-5
    fit = _resolved_fit(lrs, gaps, resolved, fit="unused")
    assert np.isclose(fit["slope"], 2.0, rtol=1e-12)
    every = np.ones(4, bool)
    sentinel = dict(slope=1.0)
    assert _resolved_fit(lrs, gaps, every, sentinel) is sentinel
    assert np.isnan(_resolved_fit(lrs, gaps, gaps > 1e-3, sentinel)["slope"])


@pytest.mark.slow
def test_gap_study_in_float32_is_fast_and_names_unresolved_points():
    """`flowgap run gap --quick --dtype float32` (about 45 s; 870 s when its flows
    chased rtol 1e-13): gradient-flow slopes are 1 as in float64, and the
    modified-flow gaps below the float32 flow's accuracy are named, not fitted."""
    import jax

    from flowgap import experiments

    with jax.enable_x64(False):
        result, _ = experiments.run("gap", quick=True, save=False, progress=False)
    for row in result.rows:
        if row["against"] == "GF":
            assert row["unresolved_lrs"] == []
            assert abs(row["slope"] - 1) < 0.1
        elif np.isfinite(row["slope"]):
            assert abs(row["slope"] - row["expected"]) < 0.1
    assert any(row["unresolved_lrs"] for row in result.rows)
    assert "left out of the fit" in result.table()
