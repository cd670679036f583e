"""Measurements on saddle-to-saddle runs (docs: theory/saddle-to-saddle): the
stages of each run, the finite-step slowdown per plateau, the alignment of the
units with the top singular pair, and the end-to-end map of a deep linear net."""

import jax.numpy as jnp
import numpy as np

from .. import analysis
from .._precision import RESOLVED_ULPS, params_dtype, warn_if_unresolved


def staircases(runs, scales):
    """The stages found on every run: the table rows, the stages keyed by
    (activation, clock, index of the scale), each run's loss and singular values
    of W₂W₁, and the linear runs' round-off-seeded stages (`round_off_seeded`)
    as (scale, clock, stage) triples."""
    rows, stages, curves, seeded = [], {}, {}, []
    for (activation, scale), pair in runs.items():
        for clock, traj in pair.items():
            maps = two_layer_maps(traj)
            found = analysis.detect_stages(traj.ts, traj.loss, maps=maps)
            stages[activation, clock, scales.index(scale)] = found
            if activation == "linear":
                seeded += [(scale, clock, k) for k in round_off_seeded(traj, found)]
            for k, stage in enumerate(found):
                rows.append(
                    dict(
                        activation=activation,
                        scale=scale,
                        clock=clock,
                        stage=k + 1,
                        start=stage.start,
                        end=stage.end,
                        loss_before=stage.loss_before,
                        loss_after=stage.loss_after,
                        rank_after=stage.rank_after,
                    )
                )
            key = f"{activation}/{scale:g}/{clock}"
            curves[f"{key}/ts"] = np.asarray(traj.ts)
            curves[f"{key}/loss"] = np.asarray(traj.loss)
            curves[f"{key}/singular_values"] = np.linalg.svd(maps, compute_uv=False)
    return rows, stages, curves, seeded


def escape_slopes(stages, sigma, lr, scales, flow_saves_per_step=1):
    r"""Per stage k and clock: the slope of the stage start against δ = −ln α,
    from the two init scales, beside the linear net's prediction, 1/σ_k on the
    flow and η/ln(1 + ησ_k) for GD (a unit grows like e^{σ_k t} or
    (1 + ησ_k)^{t/η} from the seed α). `stages` are one activation's, keyed by
    (clock, index of the scale). `tolerance`: each start is known to one save
    spacing ε, so the slope to ±2ε/Δδ.

    A stage whose escape is seeded by α has the predicted slope; a stage seeded by
    an earlier stage (for tanh, the nonlinearity couples the modes once the
    first unit is O(1)) has a smaller one."""
    delta = np.log(scales[0]) - np.log(scales[1])
    spacing = {"gd": lr, "gf": lr / flow_saves_per_step}
    found = min(len(stages[c, i]) for c in spacing for i in (0, 1))
    rows = []
    for k in range(min(found, len(sigma))):
        predicted = {"gd": lr / np.log1p(lr * sigma[k]), "gf": 1 / sigma[k]}
        for clock in spacing:
            slope = (stages[clock, 1][k].start - stages[clock, 0][k].start) / delta
            rows.append(
                dict(
                    stage=k + 1,
                    clock=clock,
                    slope=float(slope),
                    predicted=float(predicted[clock]),
                    tolerance=float(2 * spacing[clock] / delta),
                    start=float(stages[clock, 1][k].start),
                )
            )
    return rows


def two_layer_maps(traj):
    """W₂W₁ at every save (for tanh: the linearisation at 0, as tanh'(0) = 1)."""
    return np.asarray(jnp.einsum("tkm,tmd->tkd", traj.models.w2, traj.models.w1))


def slowdown(stages, sigma, lr, scales, flow_saves_per_step=1):
    """Per stage k: slopes of the stage start against δ = −ln α on both clocks, their
    ratio, and the prediction ησ_k/ln(1 + ησ_k).

    `tolerance` bounds the ratio's error from the save grids alone: a stage start
    is known to one save spacing ε (η for GD, η/`flow_saves_per_step` for GF), so
    the difference of two starts to ±ε and each slope to ±ε/Δδ."""
    delta = np.log(scales[0]) - np.log(scales[1])
    fits = []
    # a run may find fewer stages than another (e.g. one cut short by `t1`)
    found = min(len(stages[c, i]) for c in ("gd", "gf") for i in (0, 1))
    for k in range(min(found, len(sigma))):
        slope = {
            c: (stages[c, 1][k].start - stages[c, 0][k].start) / delta
            for c in ("gd", "gf")
        }
        predicted = lr * sigma[k] / np.log1p(lr * sigma[k])
        spacing = {"gd": lr, "gf": lr / flow_saves_per_step}
        tolerance = predicted * sum(spacing[c] / slope[c] for c in spacing) / delta
        fits.append(
            dict(
                stage=k + 1,
                sigma=float(sigma[k]),
                gf_slope=float(slope["gf"]),
                gd_slope=float(slope["gd"]),
                inverse_sigma=float(1 / sigma[k]),
                measured_ratio=float(slope["gd"] / slope["gf"]),
                predicted_ratio=float(predicted),
                tolerance=float(tolerance),
            )
        )
    return fits


def round_off_seeded(traj, found) -> list[int]:
    r"""The stages k ≥ 2 of a two-layer run whose plateau ended by round-off.

    Plateau k ends when the units' component along the k-th singular pair,
    seeded at the init scale α and grown while the earlier stages ran, reaches
    O(1). That component is s_k(W₁), the k-th singular value of W₁; if at the end
    of some earlier stage it is within 10 ulps of s₁(W₁), the round-off of the
    stages (a few ε · s₁(W₁) in every direction) has replaced the seed, and the
    plateau is shorter than −ln α predicts. From α = 1e-16 in float32 (ε =
    1.2e-7; seed ≈ α^(1 − σ_k/σ₁) at the first escape) this is every plateau
    after the first; in float64 none.

    **Returns:** those stage numbers (from 1).
    """
    dtype = params_dtype(traj.models)
    eps = float(np.finfo(dtype).eps)
    ts, w1 = np.asarray(traj.ts), np.asarray(traj.models.w1)
    ends = [min(int(np.searchsorted(ts, x.end)), len(ts) - 1) for x in found]
    values = [np.linalg.svd(w1[i], compute_uv=False) for i in ends]
    seeded = []
    for k in range(2, min(len(found), min(w1.shape[1:])) + 1):
        ratio = min(v[k - 1] / v[0] for v in values[: k - 1])
        warn_if_unresolved("seed of a plateau, s_k(W₁)/s₁(W₁)", ratio, 1.0, dtype)
        if ratio <= RESOLVED_ULPS * eps:
            seeded.append(k)
    return seeded


def unit_alignment(traj, coefficient):
    """Median over units of the alignment ratio at every save."""
    w1, w2 = np.asarray(traj.models.w1), np.asarray(traj.models.w2)
    return np.array(
        [np.median(analysis.alignment_ratio(a, b, coefficient)) for a, b in zip(w1, w2)]
    )


def alignment_at_escape(stages, ts, alignment):
    """The alignment ratio at the start of the first stage (None without one)."""
    if not stages:
        return None
    return float(np.interp(stages[0].start, np.asarray(ts), alignment))


def deep_linear_maps(weights) -> np.ndarray:
    """W_N ⋯ W₁ at every save (weights with a leading save axis)."""
    product = np.asarray(weights[0])
    for w in weights[1:]:
        product = np.asarray(w) @ product
    return product
