r"""step-vs-flow: gradient descent at a ladder of learning rates against the exact flow.

A sparse-recovery problem (Gaussian X, s-sparse β*, y = Xβ*) is fitted by a plain
and a polar `DiagonalNet`, each by gradient descent at a ladder of learning rates
and by the exact gradient flow, on the one clock t = kη. At the horizon T it
reports, per run, the final loss, the recovery error ‖β − β*‖ and the step–flow
gap ‖θ_GD(T) − θ_GF(T)‖, and fits the gap exponent p in gap ∝ ηᵖ (p = 1: GD is
the flow's explicit Euler method).
"""

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import dynamics, models
from ._figure import Panel, Series, shades
from ._ladder import (
    fit_against_lr,
    label_lrs,
    ladder_steps,
    slope_text,
    tone,
)
from ._result import ExperimentResult
from ._settings import Setting, SettingError
from ._step_vs_flow_sweep import SWEEP as SWEEP
from ._step_vs_flow_sweep import distance, draw_problem, exact_flow, recovery_error_of
from ._table import Column

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
    Setting(
        "t1",
        100.0,
        "horizon T (time units, t = k·lr), of `run` and of every `sweep` point",
        positive=True,
    ),
    Setting("rtol", 1e-10, "gradient-flow relative tolerance", positive=True),
    Setting("atol", 1e-12, "gradient-flow absolute tolerance", positive=True),
    Setting(
        "saves",
        200,
        "saved points per run; must divide each run's step count",
        "int",
        minimum=2,
    ),
)

QUICK = dict(n=10, d=20, sparsity=2, lrs=(0.04, 0.02, 0.01), t1=4.0, saves=50)


#: each net's colour ramp in the figure
COLOURS = {"plain": "Blues", "polar": "Oranges"}


class StepVsFlowResult(ExperimentResult):
    """What one step-vs-flow run produced.

    `rows`: one dict per run (model, clock, final loss, recovery error, gap,
    steps, status); `fits`: per model, the log–log fit of gap against lr;
    `curves`: per model the flow's and each GD run's saved times and losses,
    each GD run's gap to the flow per save, and the gaps at T over the ladder.
    """

    PANEL_SIZE = (5.0, 4.4)

    def columns(self):
        return (
            Column("model"),
            Column("clock"),
            Column("final_loss", "final loss", ".3e"),
            Column("recovery_error", "‖β−β*‖", ".3e"),
            Column("gap", "‖θ_GD−θ_GF‖(T)", ".3e"),
            Column("steps"),
            Column("status"),
        )

    def notes(self):
        return [
            f"gap exponent ({model}): {slope_text(fit)}"
            "  (GD = explicit Euler of GF: expected 1)"
            for model, fit in self.fits.items()
        ]

    def figure_data(self):
        """The curves, plus each net's fitted line `NET/gaps/fit` over the rates."""
        lrs = np.asarray(self.settings["lrs"])
        fits = {
            f"{model}/gaps/fit": np.exp(fit["intercept"]) * lrs ** fit["slope"]
            for model, fit in self.fits.items()
        }
        return {**self.curves, **fits}

    def figure_title(self):
        s = self.settings
        return (
            f"sparse recovery n={s['n']}, d={s['d']}, s={s['sparsity']}; "
            f"depth {s['depth']}, α={s['scale']:g}, ρ={s['ratio']:g}"
        )

    def panels(self):
        """Loss against time (GD at the largest lr and GF), the gap
        ‖θ_GD(t) − θ_GF(t)‖ along the run per lr, and the gap at T against lr."""
        return (self._loss_panel(), self._gap_panel(), self._exponent_panel())

    def _loss_panel(self):
        top = max(self.settings["lrs"])
        series = []
        for model, colormap in COLOURS.items():
            gd = f"{model}/gd/{top:g}"
            series += [
                Series(
                    f"{model}/gf/loss",
                    f"{model}/gf/ts",
                    label=f"{model}: GF (Diffrax)",
                    options=dict(color=tone(colormap, 0.9)),
                ),
                Series(
                    f"{gd}/loss",
                    f"{gd}/ts",
                    "--",
                    label=f"{model}: GD η={top:g}",
                    options=dict(color=tone(colormap, 0.5)),
                ),
            ]
        return Panel(
            "loss", series, xlabel="time t = kη", ylabel="training loss", yscale="log"
        )

    def _gap_panel(self):
        lrs = self.settings["lrs"]
        series = [
            Series(
                f"{model}/gd/{lr:g}/gap",
                f"{model}/gd/{lr:g}/ts",
                label=f"{model} η={lr:g}",
                skip=1,  # the gap is 0 at t = 0
                options=dict(color=colour),
            )
            for model, colormap in COLOURS.items()
            for lr, colour in zip(lrs, shades(colormap, len(lrs)))
        ]
        return Panel(
            "step–flow gap along the run",
            series,
            xlabel="time t = kη",
            ylabel="‖θ_GD(t) − θ_GF(t)‖",
            yscale="log",
            legend_size=7,
            legend_columns=2,
        )

    def _exponent_panel(self):
        series = []
        for (model, colormap), marker in zip(COLOURS.items(), "os"):
            slope = self.fits[model]["slope"]
            series += [
                Series(
                    f"{model}/gaps",
                    "lrs",
                    marker,
                    label=f"{model}: slope {slope:.3f}",
                    options=dict(color=tone(colormap, 0.8)),
                ),
                Series(
                    f"{model}/gaps/fit", "lrs", options=dict(color=tone(colormap, 0.6))
                ),
            ]
        return Panel(
            "gap at T against η (expected slope 1)",
            series,
            xlabel="learning rate η",
            ylabel=f"‖θ_GD − θ_GF‖ at T = {self.settings['t1']:g}",
            xscale="log",
            yscale="log",
            draw=label_lrs,
        )


def _models(s):
    """name → (model, rates, projection): the plain net, and the polar net with
    its rate ratio and (for the projected variant) its normalising projection."""
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
    return dict(
        model=model_name,
        clock=clock,
        final_loss=float(traj.final_loss),
        recovery_error=float(recovery_error_of(traj, truth)),
        gap=gap,
        steps=int(steps),
        status=dynamics.RESULTS[traj.result] or "ok",
    )


def _against_flow(s, problem, name, net, steps, bar):
    """One net's exact flow on the save grid, then GD at each rate of the ladder
    compared with it save by save.

    **Returns:** the net's rows and curves (`NAME/gaps`: the gaps at T).
    """
    model, rates, projection = net
    bar.set_postfix_str(f"{name} GF")
    ts = jnp.linspace(0.0, s["t1"], s["saves"] + 1)
    flow = exact_flow(
        problem.loss, model, s, t1=s["t1"], ts=ts, max_steps=1_000_000, rates=rates
    )
    bar.update()
    rows = [_row(name, "GF", flow, problem.truth, flow.stats["num_steps"])]
    curves = {f"{name}/gf/ts": flow.ts, f"{name}/gf/loss": flow.loss}
    gaps = []
    bar.set_postfix_str(f"{name} GD")
    ladder = dynamics.ladder_descent(
        problem.loss,
        model,
        s["lrs"],
        s["t1"],
        s["saves"],
        rates=rates,
        projection=projection,
    )
    for lr in s["lrs"]:
        gd = ladder[lr]
        gaps.append(float(distance(gd.final, flow.final)))
        rows.append(_row(name, f"GD lr={lr:g}", gd, problem.truth, steps[lr], gaps[-1]))
        key = f"{name}/gd/{lr:g}"
        curves[f"{key}/gap"] = distance(gd.models, flow.models, batch_dims=1)
        curves[f"{key}/ts"], curves[f"{key}/loss"] = gd.ts, gd.loss
        bar.update()
    curves[f"{name}/gaps"] = np.asarray(gaps)
    return rows, curves


def run(settings, *, seed: int, progress: bool = True) -> StepVsFlowResult:
    """Run step-vs-flow with resolved `settings` (see `SETTINGS`)."""
    s = settings
    if s["sparsity"] > s["d"]:
        raise SettingError(f"setting `sparsity` must be ≤ d = {s['d']}")
    steps = ladder_steps(s["t1"], s["lrs"], s["saves"])
    problem = draw_problem(s, jax.random.key(seed))
    rows, fits, curves = [], {}, {}
    nets = _models(s)
    total = len(nets) * (len(s["lrs"]) + 1)
    with tqdm(total=total, desc=NAME, disable=not progress, leave=False) as bar:
        for name, net in nets.items():
            net_rows, net_curves = _against_flow(s, problem, name, net, steps, bar)
            rows += net_rows
            curves.update(net_curves)
            fits[name] = fit_against_lr(s["lrs"], net_curves[f"{name}/gaps"])
    curves["lrs"] = np.asarray(s["lrs"])
    curves["truth"] = problem.truth
    return StepVsFlowResult(settings=s, rows=rows, fits=fits, curves=curves)
