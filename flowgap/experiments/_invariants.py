r"""invariants: how gradient steps break the flow's conservation laws.

Four models with known laws (docs: theory/invariants) — a depth-2 diagonal net (u⊙v),
the
polar diagonal net trained by Salimans–Kingma steps (‖θ‖²), a deep linear net
(balancedness) and a ReLU two-layer net (per-unit ‖in‖² − ‖out‖²) — are trained by
gradient descent at a ladder of learning rates and by the exact flow. Along each
run it measures the drift ‖Q(θ_t) − Q(θ_0)‖_∞, overlays the predicted drift
Σ (η²/2) gᵀ∇²Q g, and fits the drift's exponent in η at the horizon T (expected 1:
T/η steps of O(η²) each).
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, invariants, models, problems
from ._settings import Setting, SettingError

NAME = "invariants"

SETTINGS = (
    Setting(
        "lrs",
        (0.04, 0.02, 0.01, 0.005),
        "GD learning rates; each must divide t1",
        "floats",
        positive=True,
    ),
    Setting("t1", 2.0, "horizon T (time units, t = k·lr)", positive=True),
    Setting("ratio", 2.0, "polar rate ratio ρ", positive=True),
    Setting("scale", 0.3, "init scale of every model", positive=True),
    Setting("rtol", 1e-12, "gradient-flow relative tolerance", positive=True),
    Setting("atol", 1e-12, "gradient-flow absolute tolerance", positive=True),
)

QUICK = dict(lrs=(0.04, 0.02), t1=0.4)

LAWS = {
    "diagonal": "u⊙v",
    "polar": "‖θ‖²",
    "deep-linear": "balancedness",
    "relu-two-layer": "‖in‖²−‖out‖²",
}


def _cases(s, key):
    k1, k2, k3 = jax.random.split(key, 3)
    sparse = problems.sparse_recovery(k1, n=10, d=30, sparsity=3)
    polar = models.PolarDiagonalNet(30, scale=s["scale"])
    student = problems.teacher_student(
        k2, n=20, d=4, teacher_width=2, activation="relu"
    )
    return {
        "diagonal": (
            sparse,
            models.DiagonalNet(30, scale=s["scale"]),
            None,
            invariants.diagonal_balance,
        ),
        "polar": (
            sparse,
            polar,
            polar.rates(s["ratio"]),
            invariants.polar_direction_norm,
        ),
        "deep-linear": (
            problems.low_rank(k2, d_in=5, d_out=4, rank=2),
            models.DeepLinear((5, 6, 4), scale=s["scale"], key=k3),
            None,
            invariants.balancedness,
        ),
        "relu-two-layer": (
            student,
            models.TwoLayer(4, 6, 1, activation="relu", scale=s["scale"], key=k3),
            None,
            invariants.unit_rescaling,
        ),
    }


@dataclasses.dataclass
class InvariantsResult:
    """Rows (model, law, clock, drift at T, predicted, ratio), per-model fits of the
    drift exponent, and the curves behind the figure."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'model':<15} {'law':<13} {'clock':<11} {'drift(T)':>10} "
            f"{'predicted':>10} {'ratio':>7}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            pred = "" if r["predicted"] is None else f"{r['predicted']:.3e}"
            ratio = (
                "" if r["predicted"] is None else f"{r['drift'] / r['predicted']:.4f}"
            )
            lines.append(
                f"{r['model']:<15} {r['law']:<13} {r['clock']:<11} {r['drift']:>10.3e} "
                f"{pred:>10} {ratio:>7}"
            )
        lines.append("")
        for model, fit in self.fits.items():
            lines.append(
                f"drift exponent in lr ({model}): "
                f"{fit['slope']:.3f} ± {fit['stderr']:.3f}"
                "  (expected 1 as η → 0)"
            )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for ax, model in zip(axes.ravel(), LAWS):
            gd = {
                lr: tuple(
                    self.curves[f"{model}/gd/{lr:g}/{part}"]
                    for part in ("ts", "drift", "predicted")
                )
                for lr in self.settings["lrs"]
            }
            flow = (self.curves[f"{model}/gf/ts"], self.curves[f"{model}/gf/drift"])
            invariants.plot_drift(
                ax,
                gd,
                flow,
                label=LAWS[model],
                title=f"{model} (dashed: Σ η²/2 gᵀ∇²Q g)",
            )
        fig.tight_layout()
        return fig


def run(settings: dict, *, seed: int, progress: bool = True) -> InvariantsResult:
    s = settings
    steps_for = {}
    for lr in s["lrs"]:
        steps = s["t1"] / lr
        if abs(steps - round(steps)) > 1e-9 * steps or round(steps) < 1:
            raise SettingError(
                f"setting `lrs`: t1 = {s['t1']:g} is not a whole number of steps "
                f"of lr = {lr:g}"
            )
        steps_for[lr] = int(round(steps))
    rows, fits, curves = [], {}, {}
    cases = _cases(s, jax.random.key(seed))
    bar = tqdm(
        total=len(cases) * (len(s["lrs"]) + 1),
        desc=NAME,
        disable=not progress,
        leave=False,
    )
    for model_name, (problem, model, rates, law) in cases.items():
        q0 = np.asarray(law(model)).ravel()
        scale = max(float(np.max(np.abs(q0))), 1e-300)
        drifts = []
        for lr in s["lrs"]:
            traj = dynamics.gradient_descent(
                problem.loss, model, lr=lr, steps=steps_for[lr], rates=rates
            )
            ts, drift, predicted = invariants.drift_curves(
                law, problem.loss, traj, lr=lr, rates=rates
            )
            key = f"{model_name}/gd/{lr:g}"
            curves[f"{key}/ts"], curves[f"{key}/drift"] = ts, drift
            curves[f"{key}/predicted"] = predicted
            drifts.append(drift[-1])
            rows.append(
                dict(
                    model=model_name,
                    law=LAWS[model_name],
                    clock=f"GD lr={lr:g}",
                    drift=float(drift[-1]),
                    predicted=float(predicted[-1]),
                    relative=float(drift[-1] / scale),
                )
            )
            bar.update()
        ts = jnp.linspace(0.0, s["t1"], 41)
        flow = dynamics.gradient_flow(
            problem.loss,
            model,
            t1=s["t1"],
            ts=ts,
            rates=rates,
            solver=diffrax.Tsit5(),
            rtol=s["rtol"],
            atol=s["atol"],
        )
        gf_ts, gf_drift = invariants.flow_drift(law, flow)
        curves[f"{model_name}/gf/ts"], curves[f"{model_name}/gf/drift"] = (
            gf_ts,
            gf_drift,
        )
        rows.append(
            dict(
                model=model_name,
                law=LAWS[model_name],
                clock="GF",
                drift=float(gf_drift[-1]),
                predicted=None,
                relative=float(gf_drift[-1] / scale),
            )
        )
        bar.update()
        fits[model_name] = (
            analysis.loglog_slope(s["lrs"], drifts)
            if len(drifts) >= 2 and min(drifts) > 0
            else dict(slope=float("nan"), intercept=float("nan"), stderr=float("nan"))
        )
    bar.close()
    curves["lrs"] = np.asarray(s["lrs"])
    return InvariantsResult(settings=dict(s), rows=rows, fits=fits, curves=curves)
