"""wn-robust-bias (issue 5, item 1): the polar diagonal net's limit is the plain
net's limit from α_eff (docs: theory/implicit-bias), and the experiment's claims hold
on its
own numbers."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap.analysis import effective_scale, woodworth_limit
from flowgap.experiments import _wn_robust_bias as wn
from flowgap.experiments import _wn_robust_bias_rows as wn_rows
from flowgap.experiments import _wn_robust_bias_steps as wn_steps
from flowgap.experiments import _wn_robust_bias_support as wn_support
from flowgap.experiments import _wn_robust_bias_train as wn_train
from flowgap.experiments._settings import resolve
from flowgap.experiments._wn_robust_bias_rows import _status_name as rows_status
from flowgap.models import DiagonalNet, PolarDiagonalNet
from flowgap.problems import RegressionProblem, sparse_recovery


def test_effective_scale_formula():
    # α_eff = α (r∞/r₀) exp(−(ρ/2)(r∞² − r₀²)), against the expression written out.
    alpha, r0, r_inf, rho = 0.1, 0.7, 1.3, 2.0
    expected = alpha * (r_inf / r0) * np.exp(-0.5 * rho * (r_inf**2 - r0**2))
    assert np.isclose(
        float(effective_scale(alpha, r0, r_inf, rho)), expected, rtol=1e-14
    )
    # r∞ = r₀: no change of scale, for any ρ.
    assert float(effective_scale(alpha, r0, r0, 50.0)) == pytest.approx(
        alpha, rel=1e-15
    )


@pytest.mark.parametrize(
    "scale, ratio, low, high",
    [(0.01, 1.0, 5.0, np.inf), (0.1, 10.0, 0.0, 0.02), (1.0, 1.0, 0.99, 1.01)],
)
def test_polar_limit_is_plain_limit_from_effective_scale(scale, ratio, low, high):
    """Three regimes: α_eff ≈ 6.6α (r grows from a small r₀, ρ moderate),
    α_eff ≈ α/80 (ρ = 10 magnifies the bias), α_eff ≈ α (large α: r barely moves)."""
    s = resolve(
        wn.SETTINGS,
        {**wn.QUICK, "tol": 1e-20, "rtol": 1e-12, "atol": 1e-14, "max_steps": 100_000},
    )
    problem = sparse_recovery(jax.random.key(0), n=s["n"], d=s["d"], sparsity=2)
    out = wn.train(
        problem, scale, ratio, family="polar", method="gf", depth=2, settings=s
    )
    occurred = flowgap.dynamics.status_code(flowgap.RESULTS.event_occurred)
    assert int(out["status"]) == occurred
    alpha_eff = out["alpha_eff"][0]
    plain = woodworth_limit(problem.inputs, problem.targets, alpha_eff)
    gap = float(jnp.linalg.norm(out["beta"] - plain) / jnp.linalg.norm(plain))
    # Stopped at L < 1e-20, i.e. residual ‖Xβ − y‖ = √(2nL) < 1.5e-9: β is within
    # O(1e-9) of its limit and r∞ (hence α_eff) is as settled; Tsit5 at
    # rtol 1e-12 over ≤ 1.2e4 steps adds ≲ 1e-8 (measured gap ~2e-10), and the
    # dual solve is at 1e-13. So 1e-6 (the bar) has ≥ 100× margin.
    assert gap < 1e-6
    # The three regimes, so the check is not the trivial α_eff = α one.
    assert low < float(alpha_eff) / scale < high


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("scale", [1e-3, 3.0])
def test_learning_rate_is_the_gauss_newton_stability_bound(depth, scale):
    """The closed form is `stable_learning_rate` (Lanczos on the full Hessian) at
    u = v = m·1, m = max(α, ‖X⁺y‖_∞^{1/L}), for the loss with targets
    Xβ(m·1) = 0: the Gauss–Newton Hessian does not depend on y, and at zero
    residual it is the full Hessian. α = 1e-3 takes m from X⁺y, α = 3 is m = α.
    2d = 24 ≤ 64 Lanczos steps: exact up to round-off."""
    problem = sparse_recovery(jax.random.key(1), n=5, d=12, sparsity=2)
    ridge = jnp.linalg.pinv(problem.inputs) @ problem.targets
    m = max(scale, float(jnp.max(jnp.abs(ridge))) ** (1 / depth))
    assert (m == scale) == (scale == 3.0)
    interpolated = RegressionProblem(problem.inputs, jnp.zeros(problem.n))
    expected = flowgap.dynamics.stable_learning_rate(
        interpolated.loss, DiagonalNet(12, depth=depth, scale=m), fraction=0.5
    )
    lr = wn.learning_rate(problem, depth, scale, 0.5)
    assert float(lr) == pytest.approx(float(expected), rel=1e-10)


@pytest.mark.parametrize("depth", [2, 3])
def test_local_step_is_the_closed_form_at_a_balanced_interpolating_point(depth):
    """The runs' rule `local_learning_rate` (Lanczos on P^½∇²L P^½) at
    u = v = m·1 with zero residual is `learning_rate`'s closed form
    step/(L²m^{2L−2}λ_max(XXᵀ/n)): there the Hessian is the Gauss–Newton one.
    Lanczos with as many steps as parameters (2d = 24) is exact up to
    round-off, hence 1e-10."""
    problem = sparse_recovery(jax.random.key(1), n=5, d=12, sparsity=2)
    ridge = jnp.linalg.pinv(problem.inputs) @ problem.targets
    m = float(jnp.max(jnp.abs(ridge))) ** (1 / depth)
    interpolated = RegressionProblem(problem.inputs, jnp.zeros(problem.n))
    lr, _ = wn_steps.local_learning_rate(
        interpolated.loss, DiagonalNet(12, depth=depth, scale=m), 0.5, iters=24
    )
    expected = wn.learning_rate(problem, depth, 1e-3, 0.5)
    assert float(lr) == pytest.approx(float(expected), rel=1e-10)


@pytest.mark.parametrize("ratio", [1.0, 10.0])
def test_local_step_of_the_polar_net_is_the_stability_bound_with_its_rates(ratio):
    """For a polar net the rule is `stable_learning_rate(loss, model,
    rates=model.rates(ρ))`: 2·step over λ_max(P^½∇²L P^½), the direction's
    curvature scaled by ρ. 25 parameters: both Lanczos runs are exact, from
    different starts, so they agree to round-off (1e-10). The bound shrinks
    with ρ (the direction's curvature dominates at α = 0.5), so the check is
    not of an ρ-independent number."""
    problem = sparse_recovery(jax.random.key(1), n=5, d=12, sparsity=2)
    model = PolarDiagonalNet(12, depth=2, scale=0.5)
    rates = model.rates(ratio)
    lr, _ = wn_steps.local_learning_rate(problem.loss, model, 0.5, rates, iters=25)
    expected = flowgap.dynamics.stable_learning_rate(
        problem.loss, model, rates=rates, fraction=0.5
    )
    assert float(lr) == pytest.approx(float(expected), rel=1e-10)
    plain, _ = wn_steps.local_learning_rate(problem.loss, model, 0.5, iters=25)
    assert float(lr) < float(plain) / (0.5 * ratio)


def test_local_descent_undoes_a_segment_that_blows_up():
    """From α = 1e-3 at depth 3 the weights grow geometrically while escaping
    the plateau, faster than a step set at a segment's start allows: segments
    see L rise and are undone at a quarter of the step, and the run still
    converges (the plain depth-3 GD point of the quick grid; measured: 8
    undone, 2463 steps)."""
    s = resolve(wn.SETTINGS, {**wn.QUICK, "depths": (3.0,), "scales": (1e-3,)})
    problem = wn._problem(jax.random.key(0), s)
    model = DiagonalNet(s["d"], depth=3, scale=1e-3)
    final, report = wn_steps.local_descent(
        problem.loss, model, rates=None, projection=None, s=s
    )
    assert int(report["done"]) == 1 and float(report["final_loss"]) < s["tol"]
    assert int(report["undone"]) > 0
    # the largest step is far above the closed form at the solution's scale:
    # the plateau was crossed at its own (small) curvature
    assert float(report["lr_max"]) > 10 * float(
        wn.learning_rate(problem, 3, 1e-3, s["step"])
    )
    assert float(problem.loss(final)) == pytest.approx(
        float(report["final_loss"]), rel=1e-12
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("wn") / "run"
    result, folder = flowgap.experiments.run(
        wn.NAME, quick=True, out=out, force=True, progress=False
    )
    return result, folder


def test_writes_its_folder(quick):
    result, folder = quick
    for name in ("settings.json", "results.json", "arrays.npz", "figure.png"):
        assert (folder / name).stat().st_size > 0
    rows = json.loads((folder / "results.json").read_text())["rows"]
    s = result.settings
    # per depth, plain: GF + GD per α; polar: GF, rPGD, SK per (α, ρ).
    expected = len(s["depths"]) * len(s["scales"]) * (2 + 3 * len(s["ratios"]))
    assert len(rows) == expected == len(result.rows)
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        assert arrays["polar/L2/gf/recovery_error"].shape == (
            len(s["scales"]),
            len(s["ratios"]),
        )


def test_report_rebuilds_from_its_folder(quick):
    """The table and figure come from settings/rows/fits/curves alone, as
    docs/gen_results.py rebuilds them from the JSON and npz files."""
    result, folder = quick
    meta = json.loads((folder / "settings.json").read_text())
    saved = json.loads((folder / "results.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        curves = {k: arrays[k] for k in arrays.files}
    again = wn.WNRobustBiasResult(
        settings=meta["settings"], rows=saved["rows"], fits=saved["fits"], curves=curves
    )
    table = again.table()
    assert table == result.table()
    s = result.settings
    # one line per (model, depth, method, ρ): plain GF, GD; polar ×3 methods × ρ
    lines = table.split("\n\n")[0].splitlines()
    assert len(lines) == 3 + len(s["depths"]) * (2 + 3 * len(s["ratios"]))
    figure = again.figure()
    titles = [ax.get_title() for ax in figure.axes]
    for depth in (2, 3):
        assert f"L={depth} flow, ρ=10: does polar beat plain?" in titles
    assert "log10 error, polar L=2 rPGD / plain GF" in titles
    # One question per panel: at most four series (lines with a legend label).
    for ax in figure.axes:
        labelled = [x for x in ax.lines if not x.get_label().startswith("_")]
        assert len(labelled) <= 4, ax.get_title()


def test_every_flow_finishes_and_records_its_solver(quick):
    """The quick grid holds depth 3 and α = 1e-3, where the flow is stiff in the
    weights (and was left unconverged before the log-coordinate state); every
    flow point converges."""
    result, _ = quick
    s = result.settings
    assert 3 in s["depths"] and min(s["scales"]) <= 1e-3
    flows = [r for r in result.rows if r["method"] == "gf"]
    assert {(r["depth"], r["scale"]) for r in flows} >= {(3, 1e-3), (2, 1e-3)}
    assert all(r["status"] == "converged" for r in flows)
    assert {r["solver"] for r in flows} <= {"Tsit5", "Kvaerno5"}
    # float64 at the default tolerances: nothing raised, nothing at resolution.
    assert result.fits["precision"]["raised"] == {}
    assert not any("resolution" in note for note in result.notes())


def test_every_discrete_point_converges_or_states_why(quick):
    """On the quick grid the discrete runs converge to L < tol at the local
    step (29 of 30 measured; 28 within the first budget alone, 9 of 30 at the
    old fixed step and 3000 steps); each other one says why, and the reason is
    true of its numbers: a spent budget whose final rate needs more steps than
    the cap, or a stall whose e-folding time L/‖∇L‖²_P exceeds its horizon
    (budget × mean step)."""
    result, _ = quick
    s = result.settings
    runs = [r for r in result.rows if r["method"] != "gf"]
    assert len(runs) == 30
    converged = [r for r in runs if r["status"] == "converged"]
    assert len(converged) >= 29
    assert all(r["final_loss"] < s["tol"] for r in converged)
    for r in runs:
        assert s["steps"] <= r["budget"] <= s["steps_cap"]
        assert r["steps"] <= r["budget"]
        assert 0 < r["lr_min"] <= r["lr_max"] < np.inf
        if r["status"] == "converged":
            continue
        assert r["reason"] and r["status"] in ("max_steps", "saddle")
        if r["status"] == "max_steps":
            assert r["steps"] == r["budget"] and r["steps_needed"] > s["steps_cap"]
        else:
            horizon = r["budget"] * r["time"] / r["steps"]
            assert r["settle_time"] > horizon and r["escape_time"] > horizon
            assert wn_support.at_saddle(r["support_gap"]), r["reason"]
            assert "stalled at the saddle fitting" in r["reason"]
    notes = "\n".join(result.notes())
    assert f"{len(converged)} of 30 discrete points converged" in notes
    assert notes.count("not converged:") == 30 - len(converged)


def test_every_small_init_point_converges_at_depth_three(quick):
    """Issue 16's check: on the quick grid every depth-3 point from the
    smallest α converges, flows and discrete runs alike. The rPGD run at
    ρ = 10 needs a slow linear tail (q ≈ 1 − 1.7e-6 per step): its budget is
    extended from its own rate past the first 100000 steps."""
    result, _ = quick
    s = result.settings
    small = [
        r for r in result.rows if r["depth"] == 3 and r["scale"] == min(s["scales"])
    ]
    assert len(small) == 8
    assert all(r["status"] == "converged" for r in small), [
        (r["model"], r["method"], r["ratio"], r["reason"]) for r in small
    ]
    assert max(r["budget"] or 0 for r in small) > s["steps"]


def test_spent_budget_is_extended_from_the_rate_up_to_the_cap():
    """A run that spends a small first budget on a linear tail continues to
    1.25× the steps its rate needs and converges; with the cap at the first
    budget it stops there and says what it needs, more than the cap."""
    s = resolve(wn.SETTINGS, {**wn.QUICK, "depths": (2.0,), "scales": (1e-1,)})
    problem = wn._problem(jax.random.key(0), s)
    model = DiagonalNet(s["d"], depth=2, scale=1e-1)

    def descend(**overrides):
        return wn_steps.local_descent(
            problem.loss, model, rates=None, projection=None, s={**s, **overrides}
        )[1]

    full = descend()  # the plain depth-2 GD point of the quick grid: 124 steps
    steps = int(full["steps"])
    assert int(full["done"]) == 1 and steps < s["steps"]
    extended = descend(steps=steps // 2, steps_cap=10 * steps)
    assert int(extended["done"]) == 1 and int(extended["steps"]) == steps
    assert steps // 2 < int(extended["budget"]) <= 10 * steps
    capped = descend(steps=steps // 2, steps_cap=steps // 2)
    assert int(capped["done"]) == 0 and int(capped["steps"]) == steps // 2
    assert int(capped["budget"]) == steps // 2
    assert float(capped["steps_needed"]) > steps // 2


def _stiff(**overrides):
    """The plain depth-3 net at α = 0.01 alone: its flow ends in a slow tail
    (e-folding time ~1e5 against fitted modes of rate ~1), where Tsit5 runs out
    of 20000 steps and Kvaerno5 takes over (1821 steps to L < tol)."""
    return resolve(
        wn.SETTINGS,
        {
            **wn.QUICK,
            "depths": (3.0,),
            "scales": (0.01,),
            "ratios": (10.0,),
            "ratio": 10.0,
            "max_steps": 20000,
            **overrides,
        },
    )


@pytest.mark.parametrize(
    "implicit_steps, solver, status",
    [(3000, "Kvaerno5", "converged"), (50, "Tsit5", "max_steps")],
)
def test_fallback_is_recorded_without_a_traceback(
    capfd, implicit_steps, solver, status
):
    """The Kvaerno5 re-solve is kept where it gets further; with a budget of
    50 steps it does not, and the row keeps Tsit5's run, not converged. Both
    are statuses on the rows; nothing is printed (an error raised inside a
    compiled solve is printed by JAX even where Python catches it)."""
    s = _stiff(implicit_steps=implicit_steps)
    problem = wn._problem(jax.random.key(0), s)
    values = wn.grid_run(problem, "plain", "gf", 3, s)
    limits = wn.theory(problem, "plain", 3, "gf", values, s)
    (row,) = wn.rows_for("plain", 3, "gf", values, s, limits)
    assert row["solver"] == solver and row["status"] == status
    lines = wn.WNRobustBiasResult(
        settings=s, rows=[row], fits=dict(findings={}), curves={}
    ).table()
    cell = lines.splitlines()[3].split()[-1]
    assert cell.endswith("*" if status == "converged" else "!")
    assert ("*" in cell) == (solver == "Kvaerno5")
    assert "Traceback" not in capfd.readouterr().err


def test_stalled_run_is_a_saddle_with_its_reason():
    """A run that ends by its budget where both the settle time
    (L/‖∇L‖²_P)·ln(L/tol), the time to reach tol at the current relative speed,
    and the escape time (the fastest regrowth's, `_wn_robust_bias_stall`)
    exceed the horizon is a "saddle"; one
    where either is within it is "max_steps" (a depth-3 escape can follow a
    plateau of any e-folding time); a converged run stays "converged"."""
    status = wn_train.dynamics.status_code
    results = wn_train.dynamics.RESULTS
    stop = int(status(results.max_steps_reached))
    assert rows_status(stop, 1e12, 1e10, 1e9) == "saddle"
    assert rows_status(stop, 1e3, 1e10, 1e9) == "max_steps"
    assert rows_status(stop, 1e12, 1e3, 1e9) == "max_steps"
    event = int(status(results.event_occurred))
    assert rows_status(event, 1e12, 1e10, 1e9) == "converged"


def test_failed_dual_solve_is_nan_without_a_traceback(capfd):
    """α_eff = exp(−ρr²/2)-small scales make the Woodworth dual solve fail
    (sinh overflows before Xβ reaches y): NaN, silently; a normal α still
    solves (against `analysis.woodworth_limit`)."""
    s = _stiff()
    problem = wn._problem(jax.random.key(0), s)
    beta = wn_train._woodworth(problem, np.array([1e-25, 0.1]))
    assert np.all(np.isnan(beta[0]))
    expected = woodworth_limit(problem.inputs, problem.targets, 0.1)
    assert np.allclose(beta[1], expected, rtol=1e-10, atol=1e-12)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_float32_quick_run_is_clean(tmp_path):
    """`--dtype float32`: exit 0, no traceback, tolerances raised to 100ε and
    said so in the notes (the run takes ~40 s on 2 cores)."""
    done = subprocess.run(
        [sys.executable, "-m", "flowgap._cli", "run", wn.NAME, "--quick"]
        + ["--dtype", "float32", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "float32 (ε = 1.19e-07): tolerances below 100ε raised" in done.stdout
    meta = json.loads((tmp_path / "run" / "results.json").read_text())
    assert meta["fits"]["precision"]["raised"]["rtol"]["used"] == pytest.approx(
        100 * np.finfo(np.float32).eps
    )


def test_flow_limits_match_theory(quick):
    """Plain L=2 against Woodworth at α; stacked polar against Woodworth at the
    measured α_eff (L=2) or the plain flow from it (L=3). The runs stop at
    L < 1e-10 (residual √(2n·1e-10) ≈ 4.5e-5), so β is within O(1e-5)·‖β‖ of
    its limit: measured gaps ≤ 4e-5; bound 2e-4."""
    result, _ = quick
    flows = [r for r in result.rows if r["method"] == "gf" and r["model"] != "plain"]
    assert flows and all(r["limit_gap"] < 2e-4 for r in flows)
    plain = wn.lookup(result.rows, model="plain", method="gf", depth=2)
    assert all(r["theory_error"] is not None for r in plain)
    for r in plain:
        assert abs(r["recovery_error"] - r["theory_error"]) < 2e-4 * max(
            1.0, r["theory_error"]
        )


def test_polar_flow_radius_never_shrinks(quick):
    """From a balanced start (β(0) = 0) the polar flow ends with r∞ ≥ r₀: the
    depth-2 invariant gives |u∞ᵢv∞ᵢ| = (r∞/r₀)² e^{−ρ(r∞² − r₀²)}|u₀ᵢv₀ᵢ| and
    r∞² = Σ(u∞² + v∞²) ≥ 2Σ|u∞ᵢv∞ᵢ|, so e^{−ρ(r∞² − r₀²)} ≤ 1. Hence a large α
    cannot be undone by the flow (the README's "no robustness at α = 1")."""
    result, _ = quick
    d = result.settings["d"]
    flows = wn.lookup(result.rows, model="polar", method="gf", depth=2)
    for r in flows:
        r0 = r["scale"] * np.sqrt(2 * d)
        # Tsit5 at rtol 1e-10: the radius is accurate to ≲ 1e-8 relative.
        assert r["r_inf"] >= r0 * (1 - 1e-8)
        if r["scale"] <= 0.01:  # and it grows by a lot from a small start
            assert r["r_inf"] > 10 * r0


def _error(rows, **where):
    (row,) = wn.lookup(rows, depth=2, **where)
    return row["recovery_error"]


def test_readme_comparisons_hold_on_the_rows(quick):
    """The README's statements, checked on this run's rows."""
    rows = quick[0].rows
    plain = {a: _error(rows, model="plain", method="gf", scale=a) for a in (0.1, 1.0)}
    # 1. α = 1: the exact polar flow shows no robustness, at any ρ (within 5%).
    for ratio in (1.0, 10.0):
        polar = _error(rows, model="polar", method="gf", scale=1.0, ratio=ratio)
        assert polar > 0.95 * plain[1.0]
    # 2. α = 0.1: ρ = 10 magnifies the bias, ≥ 10× smaller error than plain GF.
    magnified = _error(rows, model="polar", method="gf", scale=0.1, ratio=10.0)
    assert magnified < plain[0.1] / 10
    # 3. α = 1: at a step within the local stability bound, rPGD and SK land
    #    where the flows do (within 5% of plain GF, at every ρ): the robustness
    #    the fixed plain-net step showed came from direction steps far above the
    #    bound (η·λ_max = 60 at ρ = 1, 600 at ρ = 10 at init).
    for method in ("rpgd", "sk"):
        for ratio in (1.0, 10.0):
            error = _error(rows, model="polar", method=method, scale=1.0, ratio=ratio)
            assert abs(error - plain[1.0]) < 0.05 * plain[1.0]
    # 4. α ≤ 0.1: the discrete polar methods follow the flow's trend in ρ.
    for method in ("rpgd", "sk"):
        for scale in (1e-3, 0.1):
            low, high = (
                _error(rows, model="polar", method=method, scale=scale, ratio=r)
                for r in (1.0, 10.0)
            )
            assert high < low


def test_sweep_point_is_vmappable():
    s = resolve(wn.SETTINGS, {**wn.QUICK, "model": "polar", "method": "gf"})
    fn = wn.SWEEP.point
    result = flowgap.sweep(
        lambda scale, ratio: fn(s, key=jax.random.key(0), scale=scale, ratio=ratio),
        dict(scale=[0.1, 1.0], ratio=[1.0]),
        progress=False,
    )
    values = result.values
    assert values["status"].dtype.kind == "i" and np.all(values["status"] == 0)
    assert np.all(values["converged"] == 1)
    assert values["recovery_error"].shape == (2, 1)
    assert wn.SWEEP.metric in values and set(wn.SWEEP.axes) == {"scale", "ratio"}


def test_polar_limit_is_woodworth_at_effective_scale_on_the_quick_grid():
    """The stacked depth-2 polar flow's limit is `woodworth_limit(α_eff)` to
    1e-6 at every point of the quick (α, ρ) grid, α_eff from the measured r∞.

    Where the theory applies: the stacked net at depth 2 (the mirror law of
    `effective_scale`; no closed form at depth 3, none for the split net).
    Why 1e-6 is meaningful here: the flow stops at L < 1e-16, i.e. residual
    ‖Xβ − y‖ = √(2nL) < 4.5e-8, so β and r∞ are within O(1e-7) of their limits;
    Tsit5 at rtol 1e-12 over ≤ 1.1e5 steps adds ≲ 1e-8, and the dual solve is at
    1e-13. Measured max |β − limit| ≤ 2.4e-8: 1e-6 has 40× margin, and the
    grid's α_eff span 6e-5 … 1, so the check is not the trivial α_eff = α one."""
    s = resolve(wn.SETTINGS, {**wn.QUICK, "tol": 1e-16, "rtol": 1e-12, "atol": 1e-14})
    assert min(s["scales"]) <= 1e-3
    problem = wn._problem(jax.random.key(0), s)
    values = wn.grid_run(problem, "polar", "gf", 2, s)
    assert np.all(values["converged"])
    alpha = values["alpha_eff"][..., 0].ravel()
    assert alpha.min() < 1e-3 < 0.5 < alpha.max()
    for beta, scale in zip(values["beta"].reshape(alpha.size, -1), alpha):
        limit = woodworth_limit(problem.inputs, problem.targets, scale)
        assert np.max(np.abs(beta - np.asarray(limit))) < 1e-6


def test_discrete_note_names_the_threshold_the_runs_used():
    """Where the dtype raised the loss threshold (`attainable`), the note on the
    discrete runs gives the raised one, not the settings' (a float32 run of a
    problem with L₀ > 0.7 stops at (100ε)²·L₀ > 1e-10)."""
    s = resolve(wn.SETTINGS, dict(wn.QUICK))
    row = dict(
        method="rpgd",
        status="converged",
        recovery_error=0.5,
        limit_gap=None,
        model="polar",
    )
    raised = dict(tol=dict(asked=s["tol"], used=3.5e-9))
    fits = dict(
        findings={}, precision=dict(dtype="float32", eps=1.19e-7, raised=raised)
    )
    result = wn.WNRobustBiasResult(
        settings=s, rows=[row], fits=fits, curves=dict(truth=np.ones(3))
    )
    assert any(
        "1 of 1 discrete points converged to L < 3.5e-09" in n for n in result.notes()
    )
    assert "converged to L < 1e-10" in wn_rows.discrete_notes([row], s)[0]


def _normal_fit(x, y, support):
    """Least squares on `support` by the normal equations (not `lstsq`)."""
    xs = x[:, support]
    coef = np.linalg.solve(xs.T @ xs, xs.T @ y)
    return coef, np.sum((xs @ coef - y) ** 2) / (2 * len(y))


def test_support_fit_identifies_the_least_squares_fit_on_a_support():
    """`support_fit` finds the coordinates above the cut and their fit's loss;
    the gap |L − L_S|/L is at round-off at the fit (plus coordinates below the
    cut) and O(1e-2) for a point 10% off it on the same support."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 30)), rng.normal(size=10)
    support = np.array([3, 7, 19])
    coef, fit = _normal_fit(x, y, support)
    beta = np.zeros(30)
    beta[support] = coef
    beta[[0, 11]] = 1e-3 * wn_support.SUPPORT_CUT * np.abs(coef).max()

    def gap(b):
        k, loss_s = wn_support.support_fit(x, y, b)
        loss = np.sum((x @ b - y) ** 2) / 20
        return k, loss_s, abs(loss - loss_s) / loss

    k, loss_s, at_fit = gap(beta)
    assert k == 3 and loss_s == pytest.approx(fit, rel=1e-12)
    assert at_fit < 1e-9 and wn_support.at_saddle(at_fit)
    k, _, off_fit = gap(np.where(np.abs(beta) > 1e-6, 1.1 * beta, beta))
    assert k == 3 and off_fit > 1e-3 and not wn_support.at_saddle(off_fit)
    beta[11] = 1e-2 * np.abs(coef).max()  # above the cut: a fourth coordinate
    assert wn_support.support_fit(x, y, beta)[0] == 4
    assert wn_support.support_fit(x, y, np.zeros(30)) == (0, float(y @ y / 20))


def test_polar_flow_at_a_large_ratio_stalls_at_a_checked_saddle():
    """The depth-3 polar flow at ρ = 100 from α = 0.01 concentrates its
    direction on one coordinate before the radius grows and stalls at that
    coordinate's least-squares fit (measured: L equal to it to 2e-16 relative,
    the other coordinates below 1e-60 of it, on the default problem; this is the
    quick one): the row says so, and the support's fit, recomputed here by the
    normal equations, is the run's loss."""
    s = resolve(wn.SETTINGS, {**wn.QUICK, "depths": (3.0,), "scales": (0.01,)})
    s = {**s, "ratios": (100.0,), "ratio": 100.0, "families": "plain,polar"}
    problem = wn._problem(jax.random.key(0), s)
    values = wn.grid_run(problem, "polar", "gf", 3, s)
    limits = wn.theory(problem, "polar", 3, "gf", values, s)
    (row,) = wn.rows_for("polar", 3, "gf", values, s, limits)
    assert row["status"] == "saddle", row["reason"]
    assert wn_support.at_saddle(row["support_gap"]) and row["support"] < s["sparsity"]
    beta = np.asarray(values["beta"][0, 0])
    support = np.flatnonzero(np.abs(beta) > 1e-9 * np.abs(beta).max())
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    _, fit = _normal_fit(x, y, support)
    assert row["final_loss"] == pytest.approx(fit, rel=1e-9)
    assert "stalled at the saddle fitting" in row["reason"]
