r"""step-vs-flow: gradient descent at a ladder of learning rates against the exact flow.

A sparse-recovery problem (Gaussian X, s-sparse β*, y = Xβ*) is fitted by a plain
and a polar `DiagonalNet`, each by gradient descent at a ladder of learning rates
and by the exact gradient flow, on the one clock t = kη. At the horizon T it
reports, per run, the final loss, the recovery error ‖β − β*‖ and the step–flow
gap ‖θ_GD(T) − θ_GF(T)‖, and fits the gap exponent p in gap ∝ ηᵖ (p = 1: GD is
the flow's explicit Euler method).
"""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError
from ._sweepable import Sweepable

NAME = "step-vs-flow"

SETTINGS = (
    Setting("n", 40, "number of measurements (rows of X)", "int", minimum=1),
    Setting("d", 200, "dimension of β", "int", minimum=1),
    Setting("sparsity", 5, "non-zeros in β*", "int", minimum=1),
    Setting("depth", 2, "depth L of the diagonal networks", "int", minimum=2),
    Setting("scale", 0.01, "init scale α (u = v = α·1)", positive=True),
    Setting("ratio", 1.0, "polar rate ratio ρ = η_θ/η_r", positive=True),
    Setting(
        "polar_variant",
        "projected",
        "discrete polar update",
        "str",
        choices=("projected", "salimans-kingma"),
    ),
    Setting(
        "lrs",
        (0.02, 0.01, 0.005, 0.0025),
        "GD learning rates; each must divide t1",
        "floats",
        positive=True,
    ),
    Setting("t1", 100.0, "horizon T (time units, t = k·lr)", positive=True),
    Setting("rtol", 1e-10, "gradient-flow relative tolerance", positive=True),
    Setting("atol", 1e-12, "gradient-flow absolute tolerance", positive=True),
    Setting(
        "saves",
        200,
        "saved points per run; must divide each run's step count",
        "int",
        minimum=2,
    ),
    Setting(
        "steps",
        2000,
        "GD steps per run in `flowgap sweep` (its horizon is T = steps·lr)",
        "int",
        minimum=1,
    ),
)

QUICK = dict(
    n=10, d=20, sparsity=2, lrs=(0.04, 0.02, 0.01), t1=4.0, saves=50, steps=100
)


def point(settings, *, key, scale, lr):
    """One sweep point: the plain diagonal net on the problem drawn by `key`, by
    GD (`steps` steps of `lr`) and by the exact flow to the same time T = steps·lr.

    **Returns:** `recovery_error` ‖β_GD − β*‖, `flow_recovery_error` ‖β_GF − β*‖,
    `gap` ‖θ_GD(T) − θ_GF(T)‖, `final_loss` (GD) and `status` (GD's, else GF's).
    """
    s = settings
    problem = problems.sparse_recovery(key, n=s["n"], d=s["d"], sparsity=s["sparsity"])
    model = models.DiagonalNet(s["d"], depth=s["depth"], scale=scale)
    gd = dynamics.gradient_descent(
        problem.loss, model, lr=lr, steps=s["steps"], save_every=s["steps"]
    )
    gf = dynamics.gradient_flow(
        problem.loss,
        model,
        t1=s["steps"] * lr,
        solver=diffrax.Dopri8(),
        rtol=s["rtol"],
        atol=s["atol"],
    )
    gd_status = dynamics.status_code(gd.result)
    gf_status = dynamics.status_code(gf.result)
    return dict(
        recovery_error=jnp.linalg.norm(gd.final.end_to_end() - problem.truth),
        flow_recovery_error=jnp.linalg.norm(gf.final.end_to_end() - problem.truth),
        gap=_distance(gd.final, gf.final),
        final_loss=gd.final_loss,
        status=jnp.where(gd_status != 0, gd_status, gf_status),
    )


SWEEP = Sweepable(axes=("scale", "lr"), point=point, metric="gap")


def _steps(t1: float, lr: float, saves: int) -> int:
    steps = t1 / lr
    if abs(steps - round(steps)) > 1e-9 * steps or round(steps) < 1:
        raise SettingError(
            f"setting `lrs`: t1 = {t1:g} is not a whole number of steps of lr = {lr:g}"
        )
    if round(steps) % saves:
        raise SettingError(
            f"setting `saves` ({saves}) must divide the {round(steps)} steps of lr = "
            f"{lr:g}, so GD saves fall on the flow's save times"
        )
    return int(round(steps))


def _distance(a, b, *, batch_dims: int = 0):
    """‖a − b‖₂ over the trainable leaves, per index of the leading `batch_dims`
    axes (1 for two trajectories' `models`: one value per save)."""
    la = jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))
    squares = sum(
        jnp.sum((x - y) ** 2, axis=tuple(range(batch_dims, x.ndim)))
        for x, y in zip(la, lb)
    )
    return jnp.sqrt(squares)


@dataclasses.dataclass
class StepVsFlowResult:
    """What one step-vs-flow run produced.

    `rows`: one dict per run (model, clock, lr, final loss, recovery error, gap,
    steps, status); `fits`: per model, the log–log fit of gap against lr;
    `curves`: arrays for the figure and the npz file.
    """

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'model':<8} {'clock':<14} {'final loss':>11} {'‖β−β*‖':>10} "
            f"{'‖θ_GD−θ_GF‖(T)':>15} {'steps':>7}  status"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            gap = "" if r["gap"] is None else f"{r['gap']:.3e}"
            lines.append(
                f"{r['model']:<8} {r['clock']:<14} {r['final_loss']:>11.3e} "
                f"{r['recovery_error']:>10.3e} {gap:>15} {r['steps']:>7}  {r['status']}"
            )
        lines.append("")
        for model, fit in self.fits.items():
            lines.append(
                f"gap exponent ({model}): {fit['slope']:.3f} ± {fit['stderr']:.3f}"
                "  (GD = explicit Euler of GF: expected 1)"
            )
        return "\n".join(lines)

    def figure(self):
        """Loss against time (GD at the largest lr and GF), the gap
        ‖θ_GD(t) − θ_GF(t)‖ along the run per lr, and the gap at T against lr."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, NullFormatter

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
        lrs = np.asarray(self.settings["lrs"])
        shades = np.linspace(0.35, 1.0, len(lrs))
        colours = {"plain": plt.cm.Blues, "polar": plt.cm.Oranges}
        ax = axes[0]
        for model, colour in colours.items():
            ax.semilogy(
                self.curves[f"{model}/gf/ts"],
                self.curves[f"{model}/gf/loss"],
                color=colour(0.9),
                label=f"{model}: GF (Diffrax)",
            )
            big = f"{model}/gd/{lrs.max():g}"
            ax.semilogy(
                self.curves[f"{big}/ts"],
                self.curves[f"{big}/loss"],
                "--",
                color=colour(0.5),
                label=f"{model}: GD η={lrs.max():g}",
            )
        ax.set(xlabel="time t = kη", ylabel="training loss", title="loss")
        ax.legend(fontsize=8)
        ax = axes[1]
        for model, colour in colours.items():
            for lr, shade in zip(lrs, shades):
                key = f"{model}/gd/{lr:g}"
                ax.semilogy(
                    self.curves[f"{key}/ts"][1:],
                    self.curves[f"{key}/gap"][1:],
                    color=colour(shade),
                    label=f"{model} η={lr:g}",
                )
        ax.set(
            xlabel="time t = kη",
            ylabel="‖θ_GD(t) − θ_GF(t)‖",
            title="step–flow gap along the run",
        )
        ax.legend(fontsize=7, ncol=2)
        ax = axes[2]
        for (model, colour), marker in zip(colours.items(), ("o", "s")):
            gaps = self.curves[f"{model}/gaps"]
            fit = self.fits[model]
            ax.loglog(
                lrs,
                gaps,
                marker,
                color=colour(0.8),
                label=f"{model}: slope {fit['slope']:.3f}",
            )
            ax.loglog(
                lrs,
                np.exp(fit["intercept"]) * lrs ** fit["slope"],
                "-",
                color=colour(0.6),
            )
        ax.xaxis.set_minor_locator(LogLocator(subs="all"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(
            xlabel="learning rate η",
            ylabel=f"‖θ_GD − θ_GF‖ at T = {self.settings['t1']:g}",
            title="gap at T against η (expected slope 1)",
        )
        ax.legend(fontsize=8)
        fig.suptitle(
            f"sparse recovery n={self.settings['n']}, d={self.settings['d']}, "
            f"s={self.settings['sparsity']}; depth {self.settings['depth']}, "
            f"α={self.settings['scale']:g}, ρ={self.settings['ratio']:g}",
            fontsize=10,
        )
        fig.tight_layout()
        return fig


def _models(s):
    plain = models.DiagonalNet(s["d"], depth=s["depth"], scale=s["scale"])
    polar = models.PolarDiagonalNet(s["d"], depth=s["depth"], scale=s["scale"])
    return {
        "plain": (plain, None, None),
        "polar": (
            polar,
            polar.rates(s["ratio"]),
            models.PolarDiagonalNet.normalised
            if s["polar_variant"] == "projected"
            else None,
        ),
    }


def _row(model_name, clock, traj, truth, steps, gap=None):
    beta = traj.final.end_to_end()
    return dict(
        model=model_name,
        clock=clock,
        final_loss=float(traj.final_loss),
        recovery_error=float(jnp.linalg.norm(beta - truth)),
        gap=gap,
        steps=int(steps),
        status=dynamics.RESULTS[traj.result] or "ok",
    )


def run(settings: dict, *, seed: int, progress: bool = True) -> StepVsFlowResult:
    """Run step-vs-flow with resolved `settings` (see `SETTINGS`)."""
    s = settings
    if s["sparsity"] > s["d"]:
        raise SettingError(f"setting `sparsity` must be ≤ d = {s['d']}")
    t1 = s["t1"]
    steps_per_lr = [_steps(t1, lr, s["saves"]) for lr in s["lrs"]]
    problem = problems.sparse_recovery(
        jax.random.key(seed), n=s["n"], d=s["d"], sparsity=s["sparsity"]
    )
    ts = jnp.linspace(0.0, t1, s["saves"] + 1)
    rows, fits, curves = [], {}, {}
    jobs = [(name, lr) for name in ("plain", "polar") for lr in (None, *s["lrs"])]
    bar = tqdm(jobs, desc=NAME, disable=not progress, leave=False)
    flows = {}
    gaps = {"plain": [], "polar": []}
    for name, lr in bar:
        model, rates, projection = _models(s)[name]
        if lr is None:
            bar.set_postfix_str(f"{name} GF")
            traj = dynamics.gradient_flow(
                problem.loss,
                model,
                t1=t1,
                ts=ts,
                solver=diffrax.Dopri8(),
                rtol=s["rtol"],
                atol=s["atol"],
                max_steps=1_000_000,
                rates=rates,
            )
            flows[name] = traj
            rows.append(_row(name, "GF", traj, problem.truth, traj.stats["num_steps"]))
            curves[f"{name}/gf/ts"], curves[f"{name}/gf/loss"] = traj.ts, traj.loss
            continue
        bar.set_postfix_str(f"{name} GD lr={lr:g}")
        steps = steps_per_lr[s["lrs"].index(lr)]
        traj = dynamics.gradient_descent(
            problem.loss,
            model,
            lr=lr,
            steps=steps,
            save_every=steps // s["saves"],
            rates=rates,
            projection=projection,
        )
        gap = float(_distance(traj.final, flows[name].final))
        gaps[name].append(gap)
        curves[f"{name}/gd/{lr:g}/gap"] = _distance(
            traj.models, flows[name].models, batch_dims=1
        )
        rows.append(_row(name, f"GD lr={lr:g}", traj, problem.truth, steps, gap))
        curves[f"{name}/gd/{lr:g}/ts"] = traj.ts
        curves[f"{name}/gd/{lr:g}/loss"] = traj.loss
    bar.close()
    for name in gaps:
        curves[f"{name}/gaps"] = np.asarray(gaps[name])
        if len(gaps[name]) >= 2 and all(g > 0 and np.isfinite(g) for g in gaps[name]):
            fits[name] = analysis.loglog_slope(s["lrs"], gaps[name])
        else:
            fits[name] = dict(
                slope=float("nan"), intercept=float("nan"), stderr=float("nan")
            )
    curves["lrs"] = np.asarray(s["lrs"])
    curves["truth"] = problem.truth
    return StepVsFlowResult(settings=dict(s), rows=rows, fits=fits, curves=curves)
