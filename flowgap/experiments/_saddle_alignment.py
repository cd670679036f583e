r"""Alignment of the units on every plateau, fitted against α and η (docs:
theory/saddle-to-saddle).

On plateau r GD sits near the rank-r saddle W_r, whose coefficient matrix is
C_r = −∂L/∂(W₂W₁) there (recorded by `dynamics.saddle_skip`, which lands on the
same saddles). A unit wᵢ = (row i of W₁, column i of W₂) is the saddle's part
plus what grows on the plateau; the latter is what turns to C_r's top pair. With
Q_r the projector onto the saddle's row space (inputs) and column space
(outputs), the residual w̃ᵢ = (I − Q_r)wᵢ and e_r = (v₁; u₁)/√2 the top pair of
C_r (orthogonal to Q_r's range at a critical point), the ratio is

$$\rho_r = \operatorname{median}_i \frac{\|(I - P_r)\tilde w_i\|}{\|P_r\tilde w_i\|},
\qquad P_r = e_re_r^\top,$$

minimised over the saves of the plateau (after it the units leave the linear
regime). The fit is log ρ_r = p·log α + q·log η + c over the grid of α and η,
with 95% Student-t intervals.
"""

import jax
import numpy as np

from .. import analysis, dynamics, models
from .._precision import attainable, params_dtype
from ._saddle_nets import StagedTwoLayer


def alignment_sweep(problem, s, steps: int) -> dict:
    """ρ_r on every plateau for GD runs over `alignment_scales` × `alignment_lrs`
    (each at least to time `t1`), and the fits: `rows` (one per plateau and fit) and
    `ratios` (lr, scale, plateau, ρ). Every run is GD in blocks of `steps` steps,
    the main runs' step count, so all of them reuse the main runs' compiled
    program (η is traced)."""
    template = _net(s, 1.0)
    skip = dynamics.saddle_skip(
        problem.loss,
        template,
        lr=s["lr"],
        grad_tol=attainable(1e-10, params_dtype(template)),
        whiten=True,
    )
    saddles = [
        (np.asarray(skip[int(i)].w2 @ skip[int(i)].w1), int(rank), np.asarray(c))
        for i, rank, c in zip(
            skip.stats["saddle_index"],
            skip.stats["saddle_rank"],
            skip.stats["saddle_coefficient"],
        )
    ][:-1]  # the last is the minimum: no plateau after it
    ratios = []
    for lr in s["alignment_lrs"]:
        for scale in s["alignment_scales"]:
            net = StagedTwoLayer.of(_net(s, scale))
            traj = descend_to(problem, net, lr, s["t1"], steps)
            for r, value in enumerate(plateau_minima(traj, saddles)):
                ratios.append(dict(lr=lr, scale=scale, plateau=r, ratio=value))
    return dict(rows=_fits(ratios, s), ratios=ratios)


def descend_to(problem, net, lr, t1, steps) -> dict:
    """GD at rate `lr` in blocks of `steps` steps (each block starts from the last
    one's final model: the same iterates as one run) until time ≥ `t1`; every
    step saved. A block past t1 at a larger rate only adds saves at the minimum.

    **Returns:** `ts`, `loss`, `w1`, `w2` along the whole run (numpy)."""
    parts, t0 = [], 0.0
    while True:
        traj = dynamics.gradient_descent(problem.loss, net, lr=lr, steps=steps)
        first = 0 if not parts else 1  # the block's save 0 is the last one's end
        parts.append(
            dict(
                ts=t0 + np.asarray(traj.ts)[first:],
                loss=np.asarray(traj.loss)[first:],
                w1=np.asarray(traj.models.w1)[first:],
                w2=np.asarray(traj.models.w2)[first:],
            )
        )
        net, t0 = traj.final, t0 + steps * lr
        if t0 >= t1 * (1 - 1e-12):
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _net(s, scale):
    return models.TwoLayer(
        s["d"],
        s["width"],
        s["out_dim"],
        activation="linear",
        scale=scale,
        key=jax.random.key(1),
    )


def plateau_minima(traj, saddles) -> list[float]:
    """min over plateau r's saves of ρ_r, for each plateau GD left (a plateau
    runs from the end of stage r, or the start, to the start of stage r + 1);
    `traj` as from `descend_to`."""
    ts, w1, w2 = traj["ts"], traj["w1"], traj["w2"]
    stages = analysis.detect_stages(ts, traj["loss"])
    out = []
    for r, stage in enumerate(stages[: len(saddles)]):
        first = 0 if r == 0 else int(np.searchsorted(ts, stages[r - 1].end))
        last = int(np.searchsorted(ts, stage.start)) + 1
        value = residual_alignment(w1[first:last], w2[first:last], *saddles[r])
        out.append(float(np.min(value)))
    return out


def residual_alignment(w1, w2, saddle_map, rank, coefficient) -> np.ndarray:
    """ρ_r at each save (leading axis of `w1`: (T, m, d), `w2`: (T, k, m))."""
    u, _, vt = np.linalg.svd(saddle_map)
    rows, cols = vt[:rank].T, u[:, :rank]
    inputs = w1 - (w1 @ rows) @ rows.T
    outputs = np.swapaxes(w2, 1, 2)
    outputs = outputs - (outputs @ cols) @ cols.T
    units = np.concatenate([inputs, outputs], axis=2)  # (T, m, d + k)
    cu, _, cvt = np.linalg.svd(coefficient)
    e = np.concatenate([cvt[0], cu[:, 0]]) / np.sqrt(2)
    along = units @ e
    across = np.linalg.norm(units - along[..., None] * e, axis=2)
    with np.errstate(divide="ignore"):
        return np.median(across / np.abs(along), axis=1)


def _fits(ratios, s) -> list[dict]:
    r"""Per plateau, the joint least-squares fit
    log ρ = p·log α + q·log η + c over the whole grid, with 95% Student-t
    intervals (n − 3 degrees of freedom) for p and q."""
    # scipy.stats takes 0.7 s to import: every job would pay it at start-up
    from scipy import stats

    rows = []
    for plateau in sorted({r["plateau"] for r in ratios}):
        mine = [r for r in ratios if r["plateau"] == plateau]
        design = np.array([[np.log(r["scale"]), np.log(r["lr"]), 1.0] for r in mine])
        target = np.log([r["ratio"] for r in mine])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        dof = len(mine) - 3
        if dof < 1:
            continue
        resid = target - design @ coef
        cov = resid @ resid / dof * np.linalg.inv(design.T @ design)
        half = stats.t.ppf(0.975, dof) * np.sqrt(np.diag(cov))
        rows.append(
            dict(
                plateau=plateau + 1,
                alpha_slope=float(coef[0]),
                alpha_ci=(float(coef[0] - half[0]), float(coef[0] + half[0])),
                lr_slope=float(coef[1]),
                lr_ci=(float(coef[1] - half[1]), float(coef[1] + half[1])),
                smallest=float(min(r["ratio"] for r in mine)),
                largest=float(max(r["ratio"] for r in mine)),
                points=len(mine),
            )
        )
    return rows
