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

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from .._precision import attainable_loss, attainable_tolerances
from ._figure import Panel, Series
from ._result import ExperimentResult
from ._settings import Config, Setting, SettingError
from ._table import Column

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

    # 1e-12 in float64; a coarser dtype's floor (100·ε) otherwise
    dtype = jnp.result_type(float)
    rtol, atol = attainable_tolerances(1e-12, 1e-14, dtype)

    def flow_limit(a):
        traj = dynamics.gradient_flow(
            problem.loss,
            models.DiagonalNet(d, scale=a),
            t1=s["gf_t1"],
            stop_when=dynamics.LossBelow(attainable_loss(s["tol"], dtype)),
            rtol=rtol,
            atol=atol,
            solver=diffrax.Dopri8(),
            max_steps=200_000,
        )
        return traj.final.end_to_end(), traj

    gf, traj = jax.jvp(flow_limit, (alpha,), (1.0,), has_aux=True)[1:]
    steps = [max(1, int(round(s["gd_t1"] / lr))) for lr in s["lrs"]]
    longest = max(steps)
    gd = []
    for lr, k in zip(s["lrs"], steps):
        # every rate runs the longest run's program with its moves frozen after
        # its own K steps (`MovesFor`): one compiled program for the ladder
        def descent_limit(a, lr=lr, k=k):
            return dynamics.gradient_descent(
                problem.loss,
                models.DiagonalNet(d, scale=a),
                lr=lr,
                steps=longest,
                save_every=longest,
                optimizer=dynamics.MovesFor(jnp.asarray(k, dtype)),
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
        # one hyperparameter through a long run: forward mode stores nothing
        # and compiles a far smaller program than reverse mode
        mode="forward",
        progress=progress,
    )


class SensitivityResult(ExperimentResult):
    """Rows per α (‖dβ_∞/dα‖ and each unrolled route's relative distance to the
    implicit one), fits (GD's order in η, the tuning summary), curves."""

    PANEL_SIZE = (16 / 3, 4.4)

    def columns(self):
        return (
            Column("alpha", fmt=".3g"),
            Column("implicit_norm", "|dβ/dα| implicit", ".6g"),
            Column("gf_rel", "GF rel", ".2e"),
            Column("gf_stop_time", "GF stop t", ".3g"),
            Column(lambda r: r["gd_rel"][-1], "GD rel (smallest η)", ".2e"),
            Column("gd_extrapolated_rel", "GD extrapolated rel", ".2e", "n/a"),
        )

    def notes(self):
        t = self.fits["tune"]
        return (
            f"GD - implicit ∝ η^{self.fits['gd_order']['slope']:.3f} "
            "(first order expected)",
            f"tune ρ ({len(self.curves['tune_ratio']) - 1} Adam steps on ln ρ): "
            f"ρ {t['ratio_start']:.4g} → {t['ratio_end']:.4g}, recovery error "
            f"{t['error_start']:.4g} → {t['error_end']:.4g} "
            f"(best {t['error_best']:.4g} at ρ = {t['ratio_best']:.4g})",
        )

    def figure_data(self):
        """The curves, with GD's relative distance split per learning rate
        (`gd_rel/i`) and the best tuning iterate (`tune_best_*`)."""
        c = self.curves
        gd_rel = np.asarray(c["gd_rel"])
        best = int(np.argmin(c["tune_error"]))
        return {
            **c,
            **{f"gd_rel/{i}": gd_rel[:, i] for i in range(gd_rel.shape[1])},
            "tune_best_iteration": np.asarray([best]),
            "tune_best_error": np.asarray(c["tune_error"])[[best]],
        }

    def panels(self):
        return (
            Panel(
                title="derivative of the converged limit",
                series=(
                    Series("dense_norm", "dense_alpha", label="implicit (IFT)"),
                    Series(
                        "gf_norm",
                        "alpha",
                        "o",
                        "unrolled GF",
                        options=dict(mfc="none", ms=9),
                    ),
                    Series(
                        "gd_norm",
                        "alpha",
                        "x",
                        "unrolled GD (smallest η)",
                        options=dict(ms=8),
                    ),
                ),
                xlabel="init scale α",
                ylabel="‖dβ_∞/dα‖₂",
                xscale="log",
                yscale="log",
                draw=_label_scales,
            ),
            self._agreement_panel(),
            Panel(
                title=f"tuning ρ, polar net α = {self.settings['tune_scale']:g}",
                series=(
                    Series(
                        "tune_error",
                        style="o-",
                        label="recovery error",
                        options=dict(color="C3"),
                    ),
                    Series(
                        "tune_best_error",
                        "tune_best_iteration",
                        "*",
                        "best",
                        options=dict(ms=14, color="C3"),
                    ),
                ),
                xlabel="tuning iteration (Adam on ln ρ)",
                ylabel="recovery error ‖β(T) − β*‖",
                draw=_plot_ratio,
                legend_size=0.0,  # drawn by `_plot_ratio`, with the twin axis's ρ
            ),
        )

    def _agreement_panel(self):
        gd = tuple(
            Series(f"gd_rel/{i}", "alpha", "x--", f"unrolled GD, η = {lr:g}")
            for i, lr in enumerate(self.settings["lrs"])
        )
        extrapolated = ()
        if "gd_extrapolated_rel" in self.curves:
            extrapolated = (
                Series("gd_extrapolated_rel", "alpha", "s-", "GD, Richardson η→0"),
            )
        return Panel(
            title="agreement of the three routes",
            series=(
                Series("gf_rel", "alpha", "o-", "unrolled GF (event stop)"),
                *gd,
                *extrapolated,
            ),
            xlabel="init scale α",
            ylabel="relative distance to implicit",
            xscale="log",
            yscale="log",
            draw=_label_scales,
        )


def _label_scales(ax, data):
    """Ticks at the init scales α of the unrolled runs, without minor labels."""
    from matplotlib.ticker import NullFormatter

    alpha = np.asarray(data["alpha"])
    ax.set_xticks(alpha, [f"{a:g}" for a in alpha])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plot_ratio(ax, data):
    """The rate ratio ρ along the tuning path, on a twin axis, and one legend
    for both axes (on the twin, so that its lines do not cover it)."""
    twin = ax.twinx()
    twin.plot(data["tune_ratio"], "s:", color="C0", label="ρ (right axis)")
    twin.set_ylabel("ρ = η_θ/η_r", color="C0")
    handles, labels = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    twin.legend(handles + more[0], labels + more[1], fontsize=8, loc="upper center")


def run(settings: Config, *, seed: int, progress: bool = True) -> SensitivityResult:
    """Run sensitivity with resolved `settings` (see `SETTINGS`)."""
    s = settings
    if s["sparsity"] > s["d"]:
        raise SettingError("setting `sparsity` must be at most `d`")
    if s["n"] >= s["d"]:
        raise SettingError("setting `n` must be below `d` (an implicit-bias problem)")
    problem = problems.sparse_recovery(
        jax.random.key(seed), n=s["n"], d=s["d"], sparsity=s["sparsity"]
    )
    curves, implicit = _implicit_curve(problem, s)
    rows, norms = [], {"gf_norm": [], "gd_norm": []}
    scales = tqdm(s["scales"], desc=NAME, disable=not progress, leave=False)
    for alpha, derivative in zip(scales, implicit):
        row, gf_norm, gd_norm = _compare(problem, s, alpha, derivative)
        rows.append(row)
        norms["gf_norm"].append(gf_norm)
        norms["gd_norm"].append(gd_norm)
    tuned = _tune(problem, s, progress)
    curves.update(
        alpha=np.asarray(s["scales"], float),
        gf_norm=np.asarray(norms["gf_norm"]),
        gd_norm=np.asarray(norms["gd_norm"]),
        gf_rel=np.asarray([r["gf_rel"] for r in rows]),
        gd_rel=np.asarray([r["gd_rel"] for r in rows]),
        tune_ratio=tuned.path["ratio"],
        tune_error=tuned.values,
        tune_grad=tuned.grads["ratio"],
    )
    extra_rel = [r["gd_extrapolated_rel"] for r in rows]
    if all(r is not None for r in extra_rel):
        curves["gd_extrapolated_rel"] = np.asarray(extra_rel)
    fits = dict(gd_order=_gd_order(s["lrs"], rows[0]["gd_rel"]), tune=_tuning(tuned))
    return SensitivityResult(settings=s, rows=rows, fits=fits, curves=curves)


def _implicit_curve(problem, s):
    """dβ_∞/dα by the implicit function theorem at `scales` and its norm on a
    dense α grid around them (one vmapped program). **Returns:** (the curves,
    the derivative at each of `scales`)."""
    x, y = problem.inputs, problem.targets
    lo, hi = min(s["scales"]), max(s["scales"])
    dense_alpha = np.geomspace(lo / 2, hi * 2, 40)
    every = jnp.asarray(np.concatenate([np.asarray(s["scales"], float), dense_alpha]))
    derivs = np.asarray(
        jax.vmap(lambda a: analysis.woodworth_limit_derivative(x, y, a)[1])(every)
    )
    at_scales, dense = derivs[: len(s["scales"])], derivs[len(s["scales"]) :]
    curves = dict(dense_alpha=dense_alpha, dense_norm=np.linalg.norm(dense, axis=1))
    return curves, at_scales


def _compare(problem, s, alpha, implicit):
    """The three routes to dβ_∞/dα at one α (`implicit`: the implicit function
    theorem's): the table row (relative distances of the unrolled ones to the
    implicit one), ‖GF's‖ and ‖GD's at the smallest η‖."""
    gf, traj, gd = _unrolled(problem, s, alpha)
    if not bool(traj.successful):
        raise SettingError(
            f"the flow at α = {alpha} did not reach L < tol by gf_t1 "
            f"({traj.message()}); raise `gf_t1` or `tol`"
        )
    extrapolated = _richardson(gd, s["lrs"])
    row = dict(
        alpha=float(alpha),
        implicit_norm=float(np.linalg.norm(implicit)),
        gf_rel=_relative(gf, implicit),
        gf_stop_time=float(traj.stop_time),
        gd_rel=[_relative(v, implicit) for v in gd],
        gd_extrapolated_rel=(
            None if extrapolated is None else _relative(extrapolated, implicit)
        ),
    )
    return row, float(np.linalg.norm(gf)), float(np.linalg.norm(gd[-1]))


def _gd_order(lrs, gd_rel) -> dict:
    """The log-log slope (and its CI) of GD's distance to the implicit
    derivative against η, at the first α."""
    if len(lrs) < 2:
        return dict(slope=float("nan"))
    order = analysis.loglog_slope(np.asarray(lrs), np.asarray(gd_rel))
    return {k: v for k, v in order.items() if k in ("slope", "ci")}


def _tuning(tuned) -> dict:
    """ρ and the recovery error at the start, the end and the best iterate."""
    best = int(np.argmin(tuned.values))
    return dict(
        ratio_start=float(tuned.path["ratio"][0]),
        ratio_end=float(tuned.path["ratio"][-1]),
        error_start=float(tuned.values[0]),
        error_end=float(tuned.values[-1]),
        ratio_best=float(tuned.path["ratio"][best]),
        error_best=float(tuned.values[best]),
    )
