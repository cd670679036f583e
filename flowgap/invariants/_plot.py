import numpy as np

from ._drift import gd_drift
from ._flat import law_at_saves


def drift_curves(q, loss, trajectory, *, lr, rates=None, trainable=None):
    """(ts, measured, predicted) for one GD run saved at every step: the drift
    ‖Q(θ_t) − Q(θ_0)‖_∞ and the leading-order prediction ‖Σ (η²/2) gᵀ∇²Q g‖_∞."""
    report = gd_drift(q, loss, trajectory, lr=lr, rates=rates, trainable=trainable)
    sup = lambda x: np.max(np.abs(x), axis=-1)  # noqa: E731
    return report.ts, sup(report.measured), sup(report.leading)


def flow_drift(q, trajectory):
    """(ts, ‖Q(θ(t)) − Q(θ(0))‖_∞) along a flow's finite saves."""
    finite = np.flatnonzero(np.isfinite(np.asarray(trajectory.loss)))
    values = np.asarray(law_at_saves(q, trajectory.models))[finite]
    return np.asarray(trajectory.ts)[finite], np.max(
        np.abs(values - values[0]), axis=-1
    )


def plot_drift(ax, gd: dict, flow=None, *, label: str = "Q", title: str | None = None):
    """Plot invariant drift against time on log axes: one solid line per learning
    rate from `gd` ({lr: (ts, measured, predicted)}, e.g. from `drift_curves`) with
    its predicted drift dashed, and the flow's drift (`flow` = (ts, drift), e.g.
    from `flow_drift`) dotted. Zeros are clipped to 1e-18 to stay on the log axis.

    **Returns:** `ax`.
    """
    from matplotlib import colormaps  # not pyplot: the caller owns the figure

    colours = colormaps["viridis"](np.linspace(0.1, 0.85, max(len(gd), 1)))
    for (lr, (ts, measured, predicted)), colour in zip(sorted(gd.items()), colours):
        ax.semilogy(
            ts[1:], np.maximum(measured[1:], 1e-18), color=colour, label=f"GD η={lr:g}"
        )
        ax.semilogy(ts[1:], np.maximum(predicted[1:], 1e-18), "--", color="0.3", lw=0.8)
    if flow is not None:
        ts, drift = flow
        ax.semilogy(ts[1:], np.maximum(drift[1:], 1e-18), "k:", label="GF (Diffrax)")
    ax.set(
        xlabel="time t = kη",
        ylabel=f"‖Δ {label}‖∞",
        title=title or f"drift of {label} (dashed: Σ η²/2 gᵀ∇²Q g)",
    )
    ax.legend(fontsize=8)
    return ax
