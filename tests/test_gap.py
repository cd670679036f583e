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
