r"""sensitivity: derivatives through whole training runs.

Part 1, dβ_∞/dα. A depth-2 `DiagonalNet` from u = v = α·1 fits a sparse-recovery
problem (Gaussian X, s-sparse β*, y = Xβ*). The derivative of its converged
limit with respect to the init scale α is computed three ways:

- implicit: the implicit-function-theorem derivative of the dual optimality
  condition (docs: theory/implicit-bias; `analysis.woodworth_limit_derivative`), on a
  dense α grid (no trajectory);
- unrolled GF: forward-mode derivative of β(T) through the exact flow, stopped
  by the event L < `tol` (`stop_when=LossBelow(tol)`);
- unrolled GD: forward-mode derivative of β(T) through gradient descent at each
  learning rate of `lrs` (run to T = `gd_t1`), and their Richardson
  extrapolation to η → 0 (GD's limit is the flow's at an η-shifted effective
  scale, so raw GD is off by O(η)).

Part 2, tuning ρ. `analysis.tune` runs Adam on ln ρ for the polar net
(`PolarDiagonalNet(d, scale=tune_scale)`, `rates=model.rates(ρ)`), minimising
the recovery error ‖β(T) − β*‖ of gradient descent at horizon `tune_t1`, with
the hypergradient taken through the whole run; the figure shows the error
along the tuning path.
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError

NAME = "sensitivity"

SETTINGS = (
    Setting("n", 10, "number of measurements (rows of X)", "int", minimum=1),
    Setting("d", 30, "dimension of β", "int", minimum=2),
    Setting("sparsity", 2, "non-zeros in β*", "int", minimum=1),
    Setting(
        "scales",
        (0.25, 0.5, 1.0),
        "init scales α for the unrolled derivatives",
        "floats",
        positive=True,
    ),
    Setting("tol", 1e-24, "GF stops at L < tol (event)", positive=True),
    Setting("gf_t1", 1e4, "GF horizon cap (the event stops it)", positive=True),
    Setting(
        "lrs",
        (0.02, 0.01, 0.005),
        "GD learning rates (Richardson uses η, η/2, η/4 if given so)",
        "floats",
        positive=True,
    ),
    Setting("gd_t1", 60.0, "GD horizon T (time units, t = k·lr)", positive=True),
    Setting("tune_scale", 1.0, "init scale α of the tuned polar net", positive=True),
    Setting("tune_ratio", 1.0, "starting rate ratio ρ", positive=True),
    Setting("tune_steps", 20, "Adam iterations on ln ρ", "int", minimum=1),
    Setting("tune_rate", 0.1, "Adam step size on ln ρ", positive=True),
    Setting("tune_lr", 0.01, "GD learning rate inside the tuned run", positive=True),
    Setting("tune_t1", 20.0, "horizon T of the tuned run", positive=True),
)

QUICK = dict(
    scales=(0.25, 0.5),
    lrs=(0.04, 0.02, 0.01),
    gd_t1=40.0,
    tune_steps=8,
    tune_rate=0.25,
    tune_lr=0.02,
    tune_t1=10.0,
)


def _relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _richardson(derivs, lrs):
    """Extrapolation to η → 0 of a sequence at η, η/2, η/4 (or η, η/2)."""
    ratios = np.asarray(lrs[1:]) / np.asarray(lrs[:-1])
    if len(lrs) not in (2, 3) or not np.allclose(ratios, 0.5):
        return None
    if len(lrs) == 2:
        return 2 * derivs[1] - derivs[0]
    return (8 * derivs[2] - 6 * derivs[1] + derivs[0]) / 3


def _unrolled(problem, s, alpha):
    d = s["d"]

    def flow_limit(a):
        traj = dynamics.gradient_flow(
            problem.loss,
            models.DiagonalNet(d, scale=a),
            t1=s["gf_t1"],
            stop_when=dynamics.LossBelow(s["tol"]),
            rtol=1e-12,
            atol=1e-14,
            solver=diffrax.Dopri8(),
            max_steps=200_000,
        )
        return traj.final.end_to_end(), traj

    gf, traj = jax.jvp(flow_limit, (alpha,), (1.0,), has_aux=True)[1:]
    gd = []
    for lr in s["lrs"]:
        steps = max(1, int(round(s["gd_t1"] / lr)))

        def descent_limit(a, lr=lr, steps=steps):
            return dynamics.gradient_descent(
                problem.loss,
                models.DiagonalNet(d, scale=a),
                lr=lr,
                steps=steps,
                save_every=steps,
            ).final.end_to_end()

        gd.append(np.asarray(jax.jvp(descent_limit, (alpha,), (1.0,))[1]))
    return np.asarray(gf), traj, gd


def _tune(problem, s, progress):
    polar = models.PolarDiagonalNet(s["d"], scale=s["tune_scale"])
    steps = max(1, int(round(s["tune_t1"] / s["tune_lr"])))

    def recovery_error(ratio):
        traj = dynamics.gradient_descent(
            problem.loss,
            polar,
            lr=s["tune_lr"],
            steps=steps,
            save_every=steps,
            rates=polar.rates(ratio),
        )
        return jnp.linalg.norm(traj.final.end_to_end() - problem.truth)

    return analysis.tune(
        recovery_error,
        {"ratio": s["tune_ratio"]},
        steps=s["tune_steps"],
        optimizer=optax.adam(s["tune_rate"]),
        progress=progress,
    )


@dataclasses.dataclass
class SensitivityResult:
    """Rows per α (‖dβ_∞/dα‖ and each unrolled route's relative distance to the
    implicit one), fits (GD's order in η, the tuning summary), curves."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'alpha':>7} {'|dβ/dα| implicit':>17} {'GF rel':>9} {'GF stop t':>9} "
            f"{'GD rel (smallest η)':>19} {'GD extrapolated rel':>19}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            extra = r["gd_extrapolated_rel"]
            lines.append(
                f"{r['alpha']:>7.3g} {r['implicit_norm']:>17.6g} "
                f"{r['gf_rel']:>9.2e} {r['gf_stop_time']:>9.3g} "
                f"{r['gd_rel'][-1]:>19.2e} "
                f"{'n/a' if extra is None else f'{extra:.2e}':>19}"
            )
        t = self.fits["tune"]
        lines.append(
            f"GD - implicit ∝ η^{self.fits['gd_order']['slope']:.3f} "
            f"(first order expected)"
        )
        lines.append(
            f"tune ρ ({len(self.curves['tune_ratio']) - 1} Adam steps on ln ρ): "
            f"ρ {t['ratio_start']:.4g} → {t['ratio_end']:.4g}, recovery error "
            f"{t['error_start']:.4g} → {t['error_end']:.4g} "
            f"(best {t['error_best']:.4g} at ρ = {t['ratio_best']:.4g})"
        )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter

        c = self.curves
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        ax = axes[0]
        ax.loglog(c["dense_alpha"], c["dense_norm"], "-", label="implicit (IFT)")
        ax.loglog(c["alpha"], c["gf_norm"], "o", mfc="none", ms=9, label="unrolled GF")
        ax.loglog(c["alpha"], c["gd_norm"], "x", ms=8, label="unrolled GD (smallest η)")
        ax.set(
            xlabel="init scale α",
            ylabel="‖dβ_∞/dα‖₂",
            title="derivative of the converged limit",
        )
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.loglog(c["alpha"], c["gf_rel"], "o-", label="unrolled GF (event stop)")
        for lr, rel in zip(self.settings["lrs"], c["gd_rel"].T):
            ax.loglog(c["alpha"], rel, "x--", label=f"unrolled GD, η = {lr:g}")
        if "gd_extrapolated_rel" in c:
            ax.loglog(
                c["alpha"], c["gd_extrapolated_rel"], "s-", label="GD, Richardson η→0"
            )
        ax.set(
            xlabel="init scale α",
            ylabel="relative distance to implicit",
            title="agreement of the three routes",
        )
        ax.legend(fontsize=8)
        for ax in axes[:2]:
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax = axes[2]
        ax.plot(c["tune_error"], "o-", color="C3")
        best = int(np.argmin(c["tune_error"]))
        ax.plot(best, c["tune_error"][best], "*", ms=14, color="C3", label="best")
        ax.legend(fontsize=8, loc="upper center")
        ax.set(
            xlabel="tuning iteration (Adam on ln ρ)",
            ylabel="recovery error ‖β(T) − β*‖",
            title=f"tuning ρ, polar net α = {self.settings['tune_scale']:g}",
        )
        twin = ax.twinx()
        twin.plot(c["tune_ratio"], "s:", color="C0")
        twin.set_ylabel("ρ = η_θ/η_r", color="C0")
        fig.tight_layout()
        return fig


def run(settings: dict, *, seed: int, progress: bool = True) -> SensitivityResult:
    s = settings
    if s["sparsity"] > s["d"]:
        raise SettingError("setting `sparsity` must be at most `d`")
    if s["n"] >= s["d"]:
        raise SettingError("setting `n` must be below `d` (an implicit-bias problem)")
    problem = problems.sparse_recovery(
        jax.random.key(seed), n=s["n"], d=s["d"], sparsity=s["sparsity"]
    )
    x, y = problem.inputs, problem.targets
    lo, hi = min(s["scales"]), max(s["scales"])
    dense_alpha = np.geomspace(lo / 2, hi * 2, 40)
    dense = jax.vmap(lambda a: analysis.woodworth_limit_derivative(x, y, a)[1])(
        jnp.asarray(dense_alpha)
    )
    rows, gf_rel, gd_rel, extra_rel = [], [], [], []
    gf_norm, gd_norm = [], []
    for alpha in tqdm(s["scales"], desc=NAME, disable=not progress, leave=False):
        implicit = np.asarray(analysis.woodworth_limit_derivative(x, y, alpha)[1])
        gf, traj, gd = _unrolled(problem, s, alpha)
        if not bool(traj.successful):
            raise SettingError(
                f"the flow at α = {alpha} did not reach L < tol by gf_t1 "
                f"({traj.message()}); raise `gf_t1` or `tol`"
            )
        extrapolated = _richardson(gd, s["lrs"])
        rel_gd = [_relative(v, implicit) for v in gd]
        rel_extra = None if extrapolated is None else _relative(extrapolated, implicit)
        rows.append(
            dict(
                alpha=float(alpha),
                implicit_norm=float(np.linalg.norm(implicit)),
                gf_rel=_relative(gf, implicit),
                gf_stop_time=float(traj.stop_time),
                gd_rel=rel_gd,
                gd_extrapolated_rel=rel_extra,
            )
        )
        gf_rel.append(rows[-1]["gf_rel"])
        gd_rel.append(rel_gd)
        extra_rel.append(rel_extra)
        gf_norm.append(float(np.linalg.norm(gf)))
        gd_norm.append(float(np.linalg.norm(gd[-1])))
    gd_order = (
        analysis.loglog_slope(np.asarray(s["lrs"]), np.asarray(gd_rel[0]))
        if len(s["lrs"]) > 1
        else dict(slope=float("nan"))
    )
    tuned = _tune(problem, s, progress)
    best = int(np.argmin(tuned.values))
    curves = dict(
        dense_alpha=dense_alpha,
        dense_norm=np.linalg.norm(np.asarray(dense), axis=1),
        alpha=np.asarray(s["scales"], float),
        gf_norm=np.asarray(gf_norm),
        gd_norm=np.asarray(gd_norm),
        gf_rel=np.asarray(gf_rel),
        gd_rel=np.asarray(gd_rel),
        tune_ratio=tuned.path["ratio"],
        tune_error=tuned.values,
        tune_grad=tuned.grads["ratio"],
    )
    if all(r is not None for r in extra_rel):
        curves["gd_extrapolated_rel"] = np.asarray(extra_rel)
    fits = dict(
        gd_order={k: v for k, v in gd_order.items() if k in ("slope", "ci")},
        tune=dict(
            ratio_start=float(tuned.path["ratio"][0]),
            ratio_end=float(tuned.path["ratio"][-1]),
            error_start=float(tuned.values[0]),
            error_end=float(tuned.values[-1]),
            ratio_best=float(tuned.path["ratio"][best]),
            error_best=float(tuned.values[best]),
        ),
    )
    return SensitivityResult(settings=dict(s), rows=rows, fits=fits, curves=curves)
