r"""Layer-wise GD on a three-layer linear net W₃W₂W₁: how close every layer comes
to rank k on every plateau k, against the init scale α (docs:
theory/saddle-to-saddle).

Plateau k runs from the end of stage k to the start of stage k + 1 (or the run's
end); there the end-to-end map sits near a rank-k saddle. The flow (and
layer-wise GD, to O(η)) conserves W_{j+1}ᵀW_{j+1} − W_jW_jᵀ, which is O(α²) from
N(0, α²) entries, so consecutive layers share their squared singular values up to
O(α²), and each layer is rank k up to what has not grown since the init: O(α)
against O(1). Per layer j and plateau k:

$$\rho_{jk} = \frac{\sigma_{k+1}(W_j)}{\sigma_k(W_j)}\ \text{at}\ t_k^*,
\qquad t_k^* = \operatorname{argmin}_{t\,\in\,\text{plateau }k}\max_j\rho_{jk}(t),$$

the plateau's closest approach to rank k; and the increment of the stage before
it, ΔW_j = W_j(t_k*) − W_j(t_{k−1}*) (t_0* = 0, the init), by

$$\rho^\Delta_{jk} = \sigma_2(\Delta W_j)/\sigma_1(\Delta W_j),$$

≪ 1 when stage k adds a rank-one piece to every layer. The reference is the same
ratio σ_{k+1}/σ_k of W_j(0), a Gaussian matrix: O(1). Per plateau the fit is
log ρ_jk = p_k log α + c_jk over scales and layers (one exponent, an intercept
per layer), likewise for ρ^Δ, with 95% Student-t intervals; the O(α) residual
over an O(1) σ_k predicts p_k = 1 for ρ.
"""

import jax
import numpy as np

from .. import analysis, dynamics, models
from ._figure import Panel, Series
from ._saddle_stages import deep_linear_maps

#: saves every 5 steps (Δt = 0.5 at η = 0.1): the shortest stage (≈ 4 time units)
#: still spans ≈ 8 saves, and the curves stay small at thousands of steps
SAVE_EVERY = 5


def layerwise_sweep(problem, s) -> tuple[dict, dict]:
    """Layer-wise GD from every scale of `layerwise_scales` (one compiled program:
    the scale only enters the initial arrays).

    **Returns:** the curves (per scale `layerwise/{α}/ts`, `loss` and
    `singular_values`, (saves, layer, r) with r the smallest layer's rank) and
    the fit `layerwise`: `stages`, `rows` (scale, plateau, layer, time, ratio,
    increment, initial) and `fits` (one per plateau)."""
    dims = (s["d"], s["width"], s["width"], s["out_dim"])
    curves, stages, rows = {}, [], []
    for scale in s["layerwise_scales"]:
        net = models.DeepLinear(dims, scale=scale, key=jax.random.key(2))
        traj = dynamics.gradient_descent(
            problem.loss,
            net,
            lr=s["lr"],
            steps=s["layerwise_steps"],
            save_every=SAVE_EVERY,
            layerwise=True,
        )
        weights = [np.asarray(w) for w in traj.models.weights]
        ts, loss = np.asarray(traj.ts), np.asarray(traj.loss)
        found = analysis.detect_stages(ts, loss, maps=deep_linear_maps(weights))
        stages += [_stage_row(scale, k, x) for k, x in enumerate(found)]
        rows += plateau_rows(scale, ts, weights, found)
        key = f"layerwise/{scale:g}"
        curves[f"{key}/ts"], curves[f"{key}/loss"] = ts, loss
        curves[f"{key}/singular_values"] = singular_values(weights)
    fits = [row for k in sorted({r["plateau"] for r in rows}) if (row := _fit(rows, k))]
    return curves, dict(stages=stages, rows=rows, fits=fits)


def _stage_row(scale, k, stage) -> dict:
    return dict(
        scale=scale,
        stage=k + 1,
        start=stage.start,
        end=stage.end,
        loss_after=stage.loss_after,
        rank_after=stage.rank_after,
    )


def singular_values(weights) -> np.ndarray:
    """σ₁ ≥ … ≥ σ_r of every layer at every save, r the smallest layer's rank:
    shape (saves, layers, r)."""
    r = min(min(w.shape[1:]) for w in weights)
    return np.stack(
        [np.linalg.svd(w, compute_uv=False)[:, :r] for w in weights], axis=1
    )


def plateau_rows(scale, ts, weights, stages) -> list[dict]:
    """ρ_jk and ρ^Δ_jk (module docstring) on each plateau k whose σ_{k+1} exists,
    with t_k* and the init's σ_{k+1}/σ_k (`initial`)."""
    values = singular_values(weights)
    rows, before = [], 0  # t_0* is the init
    for k, span in enumerate(plateau_spans(ts, stages), start=1):
        if k >= values.shape[2] or span.size == 0:
            break
        ratios = values[span, :, k] / values[span, :, k - 1]
        best = span[np.argmin(ratios.max(axis=1))]
        for j, w in enumerate(weights):
            step = np.linalg.svd(w[best] - w[before], compute_uv=False)
            rows.append(
                dict(
                    scale=scale,
                    plateau=k,
                    layer=j + 1,
                    time=float(ts[best]),
                    ratio=float(values[best, j, k] / values[best, j, k - 1]),
                    increment=float(step[1] / step[0]),
                    initial=float(values[0, j, k] / values[0, j, k - 1]),
                )
            )
        before = best
    return rows


def plateau_spans(ts, stages) -> list[np.ndarray]:
    """The save indices of plateau k = 1, …, K: from stage k's end to stage
    k + 1's start, the last one to the run's end."""
    spans = []
    for k, stage in enumerate(stages):
        stop = stages[k + 1].start if k + 1 < len(stages) else ts[-1]
        spans.append(np.flatnonzero((ts >= stage.end) & (ts <= stop)))
    return spans


def _fit(rows, plateau) -> dict | None:
    r"""log y = p log α + c_j (an intercept per layer) for y = ρ and y = ρ^Δ on one
    plateau, with 95% Student-t intervals for p (n − 1 − layers degrees of
    freedom); None without a degree of freedom."""
    # scipy.stats takes 0.7 s to import: every job would pay it at start-up
    from scipy import stats

    mine = [r for r in rows if r["plateau"] == plateau]
    layers = sorted({r["layer"] for r in mine})
    design = np.array(
        [[np.log(r["scale"])] + [r["layer"] == j for j in layers] for r in mine],
        dtype=float,
    )
    dof = len(mine) - design.shape[1]
    if dof < 1 or np.linalg.matrix_rank(design) < design.shape[1]:
        return None
    out = dict(plateau=plateau, points=len(mine))
    for name in ("ratio", "increment"):
        target = np.log([r[name] for r in mine])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        resid = target - design @ coef
        variance = resid @ resid / dof * np.linalg.inv(design.T @ design)[0, 0]
        half = stats.t.ppf(0.975, dof) * np.sqrt(variance)
        out[f"{name}_slope"] = float(coef[0])
        out[f"{name}_ci"] = (float(coef[0] - half), float(coef[0] + half))
        out[f"{name}_largest"] = float(max(r[name] for r in mine))
    return out


def layerwise_figure_data(curves, fits) -> dict:
    """Arrays for the two layer-wise panels: per scale and k, the largest
    σ_{k+1}/σ_k over the layers along the run (`layerwise/{α}/approach/{k}`);
    per plateau k, the largest ρ and ρ^Δ over the layers at each scale
    (`layerwise/ratio/{k}`, `layerwise/increment/{k}`, against `layerwise/alpha`;
    NaN where that run did not reach plateau k)."""
    data = {}
    for name, value in curves.items():
        if name.startswith("layerwise/") and name.endswith("/singular_values"):
            value = np.asarray(value)
            ratios = (value[:, :, 1:] / value[:, :, :-1]).max(axis=1)
            run = name.removesuffix("/singular_values")
            for k in range(ratios.shape[1]):
                data[f"{run}/approach/{k + 1}"] = ratios[:, k]
    rows = fits["rows"]
    scales = sorted({r["scale"] for r in rows})
    data["layerwise/alpha"] = np.array(scales)
    for k in sorted({r["plateau"] for r in rows}):
        for name in ("ratio", "increment"):
            data[f"layerwise/{name}/{k}"] = np.array(
                [_largest(rows, name, k, a) for a in scales]
            )
    return data


def _largest(rows, name, plateau, scale) -> float:
    """The largest `name` over the layers on one plateau at one scale (NaN if
    that run did not reach it)."""
    values = [r[name] for r in rows if r["plateau"] == plateau and r["scale"] == scale]
    return max(values, default=float("nan"))


def approach_panel(fits) -> Panel:
    """The run from the smallest scale: loss and, for each k, the largest
    σ_{k+1}/σ_k over the layers, stages shaded: each ratio dips on its plateau
    (the loss below 1e-3, after the last stage, is off the panel)."""
    scale = min(r["scale"] for r in fits["stages"])
    spans = [(r["start"], r["end"]) for r in fits["stages"] if r["scale"] == scale]
    plateaus = sorted({r["plateau"] for r in fits["rows"]})
    key = f"layerwise/{scale:g}"

    def shade_stages(ax, data):
        for start, end in spans:
            ax.axvspan(start, end, color="0.9", zorder=0)
        # the ratios sit above 1e-3; the converged loss (~1e-11) would squash them
        ax.set_ylim(1e-3, None)

    return Panel(
        title=f"layer-wise GD, 3-layer linear net (α = {scale:g})",
        series=(
            Series(f"{key}/loss", f"{key}/ts", "k", "loss"),
            *(
                Series(
                    f"{key}/approach/{k}",
                    f"{key}/ts",
                    "-",
                    f"max_j σ{k + 1}/σ{k}",
                    options=dict(color=f"C{k - 1}"),
                )
                for k in plateaus
            ),
        ),
        xlabel="time",
        ylabel="loss; largest σ_{k+1}/σ_k over the layers",
        yscale="log",
        draw=shade_stages,
    )


def scaling_panel(fits) -> Panel:
    """Per plateau, the largest ρ and ρ^Δ over the layers against α."""
    plateaus = sorted({r["plateau"] for r in fits["rows"]})
    series = []
    for k in plateaus:
        colour = dict(color=f"C{k - 1}")
        series.append(
            Series(
                f"layerwise/ratio/{k}",
                "layerwise/alpha",
                "o-",
                f"ρ, plateau {k}",
                options=colour,
            )
        )
        series.append(
            Series(
                f"layerwise/increment/{k}",
                "layerwise/alpha",
                "s--",
                f"ρΔ, stage {k}",
                options=colour,
            )
        )
    return Panel(
        title="layers approach rank k as α → 0",
        series=tuple(series),
        xlabel="init scale α",
        ylabel="largest σ_{k+1}/σ_k (ρ), σ₂/σ₁ of ΔW (ρΔ)",
        xscale="log",
        yscale="log",
        legend_size=7.0,
        legend_columns=2,
    )
