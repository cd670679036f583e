"""Saddle-to-saddle: stage detection, one rank per stage, the finite-step
slowdown per plateau, and unit alignment (docs: theory/saddle-to-saddle), on
Gaussian inputs and on the digits."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap import analysis, experiments, models
from flowgap.experiments._output import json_text
from flowgap.experiments._saddle_layerwise import _fit, plateau_rows
from flowgap.experiments._saddle_nets import StagedTwoLayer
from flowgap.experiments._saddle_problems import saddle_problem

from .helpers import tree_allclose


def test_detects_a_synthetic_staircase():
    # L(t) = 1 + Σ_k h_k (1 − sigmoid((t − c_k)/w)): drops centred at c_k
    ts = np.linspace(0, 100, 2001)
    centres, heights = (20.0, 50.0, 80.0), (4.0, 2.0, 1.0)
    loss = 0.01 + sum(
        h / (1 + np.exp((ts - c) / 1.0)) for c, h in zip(centres, heights)
    )
    stages = analysis.detect_stages(ts, loss)
    assert len(stages) == 3
    for stage, centre in zip(stages, centres):
        assert stage.start < centre < stage.end
        assert stage.end - stage.start < 15  # the drops, not the plateaus
    # plateau levels between the stages
    assert np.isclose(stages[0].loss_after, 3.01, rtol=0.05)
    assert np.isclose(stages[1].loss_after, 1.01, rtol=0.05)


def test_a_loss_spike_is_not_a_stage():
    # a GD catapult: the loss jumps up on the last plateau and falls back to it;
    # the fall reaches no new low, so it is not a stage
    ts = np.linspace(0, 100, 2001)
    loss = 0.01 + sum(
        h / (1 + np.exp((ts - c) / 1.0)) for c, h in zip((20.0, 50.0), (4.0, 2.0))
    )
    loss = loss + 1.0 * np.exp(-(((ts - 80.0) / 0.5) ** 2))
    stages = analysis.detect_stages(ts, loss)
    assert len(stages) == 2
    for stage, centre in zip(stages, (20.0, 50.0)):
        assert stage.start < centre < stage.end


def test_the_default_floor_is_where_the_loss_dtype_stops_resolving():
    # a drop from 1 to a plateau at 1.2e-9, then one to 1e-11: in float64 the
    # curve is cut at 1e-10 · L(0), past the second drop; in float32 at
    # 10·(100ε)² · L(0) = 1.4e-9 · L(0), the loss's round-off, before it
    ts = np.linspace(0, 100, 2001)
    loss = 1e-11 + 1.0 / (1 + np.exp(ts - 20.0)) + 1.2e-9 / (1 + np.exp(ts - 60.0))
    assert len(analysis.detect_stages(ts, loss)) == 2
    in_float32 = analysis.detect_stages(ts.astype(np.float32), loss.astype(np.float32))
    assert len(in_float32) == 1
    assert in_float32[0].start < 20.0 < in_float32[0].end
    # an explicit floor is kept in either dtype
    assert len(analysis.detect_stages(ts, loss.astype(np.float32), floor=1e-10)) == 2


def test_rank_and_alignment_helpers_are_exact_on_known_matrices():
    assert analysis.numerical_rank(np.diag([3.0, 1.0, 1e-5])) == 2
    assert analysis.numerical_rank(np.zeros((2, 2))) == 0
    coefficient = np.array([[2.0, 0.0], [0.0, 1.0]])  # top pair: e₁, e₁
    w1 = np.array([[1.0, 0.0], [1.0, 0.1]])
    w2 = np.array([[1.0, 1.0], [0.0, 0.0]])
    # unit 0 = (1, 0, 1, 0) is exactly along e = (1, 0, 1, 0)/√2
    ratio = analysis.alignment_ratio(w1, w2, coefficient)
    assert ratio[0] <= 1e-15  # zero up to the SVD's round-off
    assert np.isclose(ratio[1], 0.1 / np.sqrt(2), rtol=1e-12)


@pytest.fixture(scope="module")
def quick():
    result, _ = experiments.run(
        "saddle-to-saddle", quick=True, save=False, progress=False
    )
    return result


def test_one_stage_per_teacher_rank_on_both_clocks(quick):
    rank = quick.settings["teacher_rank"]
    for scale in quick.settings["scales"]:
        for clock in ("gd", "gf"):
            stages = quick.stages("linear", scale, clock)
            assert len(stages) == rank
            assert [s["rank_after"] for s in stages] == list(range(1, rank + 1))
            # each stage ends on a lower plateau
            losses = [s["loss_after"] for s in stages]
            assert all(np.diff(losses) < 0)


def test_finite_step_slowdown_per_plateau(quick):
    # GD/GF ratio of escape-time slopes against δ = −ln α is ησ/ln(1 + ησ) per
    # mode; the tolerance is the save-spacing quantisation of the stage starts,
    # and it must resolve the effect: at most a quarter of the slowdown itself
    fits = quick.fits["slowdown"]
    assert len(fits) == quick.settings["teacher_rank"]
    for f in fits:
        assert f["tolerance"] <= 0.25 * (f["predicted_ratio"] - 1)
        assert abs(f["measured_ratio"] - f["predicted_ratio"]) <= f["tolerance"]
        assert f["measured_ratio"] > 1  # GD is slower on every plateau


def test_no_plateau_is_round_off_seeded_in_float64(quick):
    assert quick.fits["round_off_seeded"] == []


@pytest.mark.slow
def test_float32_run_is_clean_and_flags_round_off_seeded_plateaus():
    """`--dtype float32` (about 25 s): the first plateau, seeded by α, escapes
    when float64's does; from α = 1e-16 the later seeds, α^(1 − σ_k/σ₁) ≈ 1e-10,
    are below float32's resolution, so round-off seeds those plateaus, and the
    result says so rather than report their slowdown as dynamics."""
    with jax.enable_x64(False):
        result, _ = experiments.run(
            "saddle-to-saddle", quick=True, save=False, progress=False
        )
    small = result.settings["scales"][1]
    assert [tuple(x) for x in result.fits["round_off_seeded"]] == [
        (small, clock, k) for clock in ("gd", "gf") for k in (2, 3)
    ]
    assert "round-off, not α" in result.table()
    rank = result.settings["teacher_rank"]
    for scale in result.settings["scales"]:
        for clock in ("gd", "gf"):
            stages = result.stages("linear", scale, clock)
            assert [s["rank_after"] for s in stages] == list(range(1, rank + 1))
    # plateau 1 is resolved: its slowdown is float64's (GD/GF 1.1070 there)
    first = result.fits["slowdown"][0]
    assert abs(first["measured_ratio"] - first["predicted_ratio"]) <= first["tolerance"]


def test_units_align_on_the_first_plateau(quick):
    # ratio ~ e^{−(σ₁−σ₂)t} at escape: far below 1
    assert quick.fits["alignment_at_first_escape"] < 1e-2
    assert quick.curves["alignment"][0] > 1  # random init: not aligned


def test_report_rebuilds_from_saved_results(quick):
    # docs/gen_results.py rebuilds a result from JSON: settings and fits through
    # strict JSON text (as results.json is written), curves as arrays
    saved = json.loads(json.dumps(dict(quick.settings)))
    fits = json.loads(json_text(quick.fits))
    rebuilt = type(quick)(saved, quick.rows, fits, quick.curves)
    assert rebuilt.table() == quick.table()
    assert "finite-step slowdown per plateau" in quick.table()
    assert "layer-wise GD: log ρ = p log α" in quick.table()
    titles = [ax.get_title() for ax in rebuilt.figure().axes if ax.get_visible()]
    assert titles[:2] == [
        f"staircase (α = {saved['scales'][1]:g})",
        "one rank per stage",
    ]
    small = min(saved["layerwise_scales"])
    assert titles[3:] == [
        f"layer-wise GD, 3-layer linear net (α = {small:g})",
        "layers approach rank k as α → 0",
    ]


def test_bad_scales_name_the_setting():
    with pytest.raises(ValueError, match="`scales`"):
        experiments.run(
            "saddle-to-saddle",
            quick=True,
            overrides={"scales": "1e-8,1e-4"},
            save=False,
        )


def test_tanh_net_learns_in_stages_on_both_clocks(quick):
    """A tanh net (σ'(0) = 1, so the linear net's coefficient matrix) shows the
    staircase too: at least 2 stages with rising rank of the linearised map, on
    GD and on the flow, from both init scales."""
    for scale in quick.settings["scales"]:
        for clock in ("gd", "gf"):
            stages = quick.stages("tanh", scale, clock)
            assert len(stages) >= 2
            ranks = [s["rank_after"] for s in stages]
            assert ranks[0] >= 1 and all(np.diff(ranks) > 0), ranks
            assert all(np.diff([s["loss_after"] for s in stages]) < 0)


def test_tanh_escapes_against_the_linear_prediction(quick):
    # stage 1 is seeded by α: its escape time grows like the linear net's,
    # 1/σ₁ per unit of −ln α on the flow and η/ln(1 + ησ₁) on GD, to the save
    # spacing; later stages are seeded by the first escape (tanh couples the
    # modes once a unit is O(1)), so their slopes stay far below 1/σ_k
    rows = {(r["stage"], r["clock"]): r for r in quick.fits["tanh_escapes"]}
    for clock in ("gd", "gf"):
        first = rows[1, clock]
        assert first["tolerance"] < 0.05 * first["predicted"]
        assert abs(first["slope"] - first["predicted"]) <= first["tolerance"]
        later = [r for (k, c), r in rows.items() if c == clock and k > 1]
        assert later
        for r in later:
            assert r["slope"] < 0.5 * r["predicted"], r


def _layerwise_rows(result, scale):
    return [r for r in result.fits["layerwise"]["rows"] if r["scale"] == scale]


def test_layerwise_net_learns_one_rank_per_stage_at_every_scale(quick):
    """Layer-wise GD on W₃W₂W₁ from every init scale: one stage per teacher rank,
    the end-to-end rank rising 1, 2, 3, and a measurement on every plateau for
    every layer."""
    rank = quick.settings["teacher_rank"]
    layerwise = quick.fits["layerwise"]
    for scale in quick.settings["layerwise_scales"]:
        stages = [x for x in layerwise["stages"] if x["scale"] == scale]
        assert [x["rank_after"] for x in stages] == list(range(1, rank + 1))
        cells = {(r["plateau"], r["layer"]) for r in _layerwise_rows(quick, scale)}
        assert cells == {(k, j) for k in range(1, rank + 1) for j in (1, 2, 3)}


def test_every_layer_is_rank_k_on_plateau_k(quick):
    """On plateau k, ρ = σ_{k+1}(W_j)/σ_k(W_j) at the closest approach is small
    for every layer at the smallest scale (α = 0.01): at most a tenth of the same
    ratio at the init, a Gaussian matrix's O(1) ratio (0.44-0.94 here; measured
    ρ/that ≤ 0.06). What is left beyond rank k is the init, not grown: σ_{k+1}(W_j)
    at t_k* is at most twice ‖W_j(0)‖₂ (it bounds σ_{k+1} of the rank-k part plus
    the init, by Weyl; the factor 2 lets the unlearned modes double on the plateau),
    at every scale."""
    for scale in quick.settings["layerwise_scales"]:
        key = f"layerwise/{scale:g}"
        ts, values = quick.curves[f"{key}/ts"], quick.curves[f"{key}/singular_values"]
        for r in _layerwise_rows(quick, scale):
            j, k = r["layer"] - 1, r["plateau"]
            at = int(np.flatnonzero(ts == r["time"])[0])
            assert values[at, j, k] <= 2 * values[0, j, 0], r
            if scale == min(quick.settings["layerwise_scales"]):
                assert r["ratio"] <= 0.1 * r["initial"], r


def test_each_stage_adds_a_rank_one_piece_to_every_layer(quick):
    """The change of W_j across stage k (between the closest approaches of
    plateaus k − 1 and k; the init before stage 1) has σ₂/σ₁ at most a tenth of
    σ₂/σ₁ of W_j(0), a Gaussian matrix's (0.71-0.94 here), at the smallest scale,
    for every stage and layer."""
    small = min(quick.settings["layerwise_scales"])
    rows = _layerwise_rows(quick, small)
    first = {r["layer"]: r["initial"] for r in rows if r["plateau"] == 1}
    for r in rows:
        assert r["increment"] <= 0.1 * first[r["layer"]], r


def test_rank_k_approach_tightens_as_alpha_shrinks(quick):
    """ρ and ρΔ fall with α on every plateau and layer, and the fit
    log ρ = p log α + c_j gives p within 0.1 of the predicted 1 (the residual is
    the O(α) init over an O(1) σ_k; σ_k itself moves by a few % over the scales,
    which shifts p by that over ln 4), with its 95% interval above 0.9; ρΔ's
    exponent has its interval above 0."""
    scales = sorted(quick.settings["layerwise_scales"])
    rows = quick.fits["layerwise"]["rows"]
    for k in (1, 2, 3):
        for j in (1, 2, 3):
            line = sorted(
                (r["scale"], r["ratio"], r["increment"])
                for r in rows
                if r["plateau"] == k and r["layer"] == j
            )
            assert [x[0] for x in line] == scales
            assert all(np.diff([x[1] for x in line]) > 0), (k, j, line)
            assert all(np.diff([x[2] for x in line]) > 0), (k, j, line)
    fits = {f["plateau"]: f for f in quick.fits["layerwise"]["fits"]}
    assert sorted(fits) == [1, 2, 3]
    for f in fits.values():
        assert f["points"] == 3 * len(scales)
        assert abs(f["ratio_slope"] - 1) < 0.1, f
        assert f["ratio_ci"][0] > 0.9, f
        assert f["increment_ci"][0] > 0, f


def _diagonal_path(profile, shape, rng):
    """W(t) = U diag(profile(t)) Vᵀ at t = 0, …, 29, U and V random with
    orthonormal columns: its singular values are `profile(t)` exactly."""
    u = np.linalg.qr(rng.normal(size=(shape[0], 3)))[0]
    v = np.linalg.qr(rng.normal(size=(shape[1], 3)))[0]
    return np.stack([u @ np.diag(profile(t)) @ v.T for t in range(30)])


def test_plateau_measures_are_exact_on_known_singular_values():
    """Two layers with prescribed singular values, stages over [5, 7] and
    [15, 17]: plateau 1 (saves 7-15) has its closest approach at t = 10, plateau
    2 (saves 17-29) at t = 20 (where the largest ratio over the layers is
    smallest); ρ, the increments' σ₂/σ₁ and the init's ratios are the prescribed
    ones. Singular values are exact to ε‖W‖ (Weyl), so ratios down to 2e-3 to
    ~1e-13 relative: rtol 1e-11."""

    def profile(top):
        def at(t):
            if t <= 5:
                return np.array([0.03 * top, 0.025, 0.01])
            if t <= 15:
                return np.array([top, 0.02 * (1 + (t - 10) ** 2 / 10), 0.012])
            return np.array([top, 0.9, 0.01 * (1 + (t - 20) ** 2 / 50)])

        return at

    rng = np.random.default_rng(0)
    weights = [
        _diagonal_path(profile(1.0), (5, 4), rng),
        _diagonal_path(profile(2.0), (4, 5), rng),
    ]
    stages = [
        analysis.Stage(5.0, 7.0, 1.0, 0.5, 1),
        analysis.Stage(15.0, 17.0, 0.5, 0.1, 2),
    ]
    rows = plateau_rows(0.01, np.arange(30.0), weights, stages)
    expected = [  # (plateau, layer, t*, ρ, ρΔ, init's σ_{k+1}/σ_k)
        (1, 1, 10.0, 0.02, 0.005 / 0.97, 0.025 / 0.03),
        (1, 2, 10.0, 0.01, 0.005 / 1.94, 0.025 / 0.06),
        (2, 1, 20.0, 0.01 / 0.9, 0.002 / 0.88, 0.01 / 0.025),
        (2, 2, 20.0, 0.01 / 0.9, 0.002 / 0.88, 0.01 / 0.025),
    ]
    assert len(rows) == len(expected)
    for r, (k, j, t, ratio, increment, initial) in zip(rows, expected):
        assert (r["plateau"], r["layer"], r["time"]) == (k, j, t)
        assert r["ratio"] == pytest.approx(ratio, rel=1e-11)
        assert r["increment"] == pytest.approx(increment, rel=1e-11)
        assert r["initial"] == pytest.approx(initial, rel=1e-11)


def test_layerwise_fit_recovers_an_exact_power_law():
    """ρ = c_j α^1.5 and ρΔ = c_j α^0.5 exactly, with a different c_j per layer:
    the fit's common exponent is 1.5 (0.5) to round-off (ln of the data to
    ~1e-16 relative over a ln α spread of 1.4), and its interval collapses onto it."""
    rows = [
        dict(
            scale=a,
            plateau=1,
            layer=j,
            ratio=c * a**1.5,
            increment=c * a**0.5,
        )
        for a in (0.04, 0.02, 0.01)
        for j, c in ((1, 3.0), (2, 0.5), (3, 7.0))
    ]
    fit = _fit(rows, 1)
    assert fit["points"] == 9
    for name, p in (("ratio", 1.5), ("increment", 0.5)):
        assert fit[f"{name}_slope"] == pytest.approx(p, abs=1e-12)
        low, high = fit[f"{name}_ci"]
        assert p - 1e-10 < low <= high < p + 1e-10


def test_units_align_on_every_plateau_as_alpha_and_lr_shrink(quick):
    """ρ_r (min over plateau r of the median residual alignment ratio, against
    the saddle's own coefficient matrix) fitted as log ρ = p log α + q log η + c
    over the quick grid: every plateau aligns better as α shrinks (p's whole 95%
    interval above 0), and plateau 1 also as η shrinks."""
    fits = {r["plateau"]: r for r in quick.fits["alignment"]["rows"]}
    assert sorted(fits) == [1, 2, 3]
    for row in fits.values():
        assert row["points"] >= 9  # ≥ 3 scales × 3 rates: the intervals mean something
        assert row["alpha_ci"][0] > 0, row
        assert row["smallest"] < 1e-2  # aligned: far below 1 at the smallest α
    assert fits[1]["lr_ci"][0] > 0, fits[1]
    # the raw ratios decrease along α at every η on every plateau
    ratios = quick.fits["alignment"]["ratios"]
    for plateau in range(3):
        for lr in quick.settings["alignment_lrs"]:
            line = sorted(
                (r["scale"], r["ratio"])
                for r in ratios
                if r["plateau"] == plateau and r["lr"] == lr
            )
            assert all(np.diff([v for _, v in line]) > 0), (plateau, lr, line)


def test_digits_inputs_span_the_digits_spectrum():
    """problem=digits: d uncorrelated principal components of the UCI digits,
    at ranks spaced from the 1st to the 48th, with variances λ_r/λ₁: from 1 down
    past 10⁻² (the 48th eigenvalue of 200 digits is 2.8e-3 of the first), where
    the top 8 alone stop near 0.3; targets are a rank-3 linear map of them."""
    s = dict(problem="digits", n=200, d=8, out_dim=4, teacher_rank=3, decay=1.0)
    problem = saddle_problem(s, jax.random.key(0))
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    covariance = x.T @ x / len(x)
    spectrum = np.diag(covariance)
    # uncorrelated to round-off: off-diagonal at the ε·λ₁ level
    assert np.abs(covariance - np.diag(spectrum)).max() < 1e-12
    assert spectrum[0] == pytest.approx(1.0, rel=1e-12)
    assert np.all(np.diff(spectrum) < 0)
    assert spectrum[-1] < 1e-2
    assert np.linalg.matrix_rank(y.T @ x / len(x), tol=1e-10) == 3


@pytest.fixture(scope="module")
def digits(quick):
    # after `quick`: same shapes (n = 200, d = 8), so its compiled programs serve
    result, _ = experiments.run(
        "saddle-to-saddle",
        quick=True,
        overrides={"problem": "digits"},
        save=False,
        progress=False,
    )
    return result


def test_digits_regression_learns_in_stages_on_both_clocks(digits):
    """On the digits' anisotropic inputs (spectrum over two decades) both nets
    learn in stages on GD and on the flow, from both init scales: the linear
    net one stage per teacher rank, rank 1, 2, 3, the tanh net at least 2 with
    rising rank; each stage ends on a lower loss."""
    rank = digits.settings["teacher_rank"]
    for scale in digits.settings["scales"]:
        for clock in ("gd", "gf"):
            linear = digits.stages("linear", scale, clock)
            assert [s["rank_after"] for s in linear] == list(range(1, rank + 1))
            tanh = digits.stages("tanh", scale, clock)
            assert len(tanh) >= 2
            assert all(np.diff([s["rank_after"] for s in tanh]) > 0)
            for stages in (linear, tanh):
                assert all(np.diff([s["loss_after"] for s in stages]) < 0)


def test_digits_escape_times_follow_the_singular_values(digits):
    # the same finite-step slowdown as on Gaussian inputs, per plateau, within
    # the save-spacing tolerance, which resolves the effect (≤ a quarter of it);
    # the flow's slope against −ln α is 1/σ_k to that tolerance's scale
    fits = digits.fits["slowdown"]
    assert len(fits) == digits.settings["teacher_rank"]
    for f in fits:
        assert f["tolerance"] <= 0.25 * (f["predicted_ratio"] - 1)
        assert abs(f["measured_ratio"] - f["predicted_ratio"]) <= f["tolerance"]
    first = fits[0]
    assert abs(first["gf_slope"] - first["inverse_sigma"]) < 0.05 * first["gf_slope"]


@pytest.mark.parametrize(
    "overrides, setting",
    [
        ({"problem": "mnist"}, "`problem`"),
        ({"problem": "digits", "d": "64"}, "`d`"),
        ({"problem": "digits", "n": "40"}, "`n`"),
        ({"layerwise_scales": "0.01,0.01"}, "`layerwise_scales`"),
        ({"layerwise_steps": "8001"}, "`layerwise_steps`"),
    ],
)
def test_bad_problem_settings_name_the_setting(overrides, setting):
    with pytest.raises(ValueError, match=setting):
        experiments.run("saddle-to-saddle", quick=True, overrides=overrides, save=False)


@pytest.mark.parametrize("activation", ["linear", "tanh"])
def test_staged_net_is_the_two_layer_net(activation, key):
    # the activation as data: the same value and gradient as `models.TwoLayer`
    # (`jnp.where` selects one branch exactly), to float64 round-off
    net = models.TwoLayer(5, 4, 3, activation=activation, scale=0.7, key=key)
    staged = StagedTwoLayer.of(net)
    x = jax.random.normal(jax.random.key(3), (5,))
    assert tree_allclose(staged(x), net(x), rtol=1e-15, atol=0.0)
    grad = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))
    g_net, g_staged = grad(net), grad(staged)
    assert tree_allclose(g_staged.w1, g_net.w1, rtol=1e-14, atol=1e-16)
    assert tree_allclose(g_staged.w2, g_net.w2, rtol=1e-14, atol=1e-16)
