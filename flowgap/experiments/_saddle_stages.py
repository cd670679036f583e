"""Measurements on saddle-to-saddle runs (docs: theory/saddle-to-saddle): the
stages of each run, the finite-step slowdown per plateau, the alignment of the
units with the top singular pair, and the rank of the layers on a plateau."""

import jax.numpy as jnp
import numpy as np

from .. import analysis


def staircases(runs, scales):
    """The stages found on every run: the table rows, the linear net's stages
    keyed by (clock, index of the scale), and each run's loss and singular
    values of W₂W₁."""
    rows, stages, curves = [], {}, {}
    for (activation, scale), pair in runs.items():
        for clock, traj in pair.items():
            maps = two_layer_maps(traj)
            found = analysis.detect_stages(traj.ts, traj.loss, maps=maps)
            if activation == "linear":
                stages[clock, scales.index(scale)] = found
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
    return rows, stages, curves


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
    for k in range(min(len(stages["gd", 0]), len(stages["gd", 1]), len(sigma))):
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


def plateau_ratio(stages, ts, ratios):
    """Median over the plateau after the first stage (to the next stage or the
    end) of the largest σ₂/σ₁ among the layers: ≪ 1 when every layer is near
    rank 1. None if there is no first stage."""
    if not stages:
        return None
    stop = stages[1].start if len(stages) > 1 else ts[-1]
    inside = (ts >= stages[0].end) & (ts <= stop)
    return float(np.median(ratios[inside].max(axis=1))) if inside.any() else None
