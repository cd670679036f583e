r"""invariants: how gradient steps break the flow's conservation laws.

Four models with known laws (docs: theory/invariants) — a depth-2 diagonal net
(u⊙v), the polar diagonal net trained by Salimans–Kingma steps (‖θ‖²), a deep
linear net (balancedness) and a ReLU two-layer net (per-unit ‖in‖² − ‖out‖²) —
are trained by gradient descent at a ladder of learning rates and by the exact
flow. Along each run it measures the drift ‖Q(θ_t) − Q(θ_0)‖_∞, overlays the
predicted drift Σ (η²/2) gᵀ∇²Q g, and fits the drift's exponent in η at the
horizon T (expected 1: T/η steps of O(η²) each).
"""

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import dynamics, invariants, models, problems
from .._precision import attainable_tolerances, params_dtype
from ._figure import Panel, Series, shades
from ._ladder import fit_against_lr, ladder_steps, slope_text
from ._result import ExperimentResult
from ._settings import Setting
from ._table import Column

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
    Setting(
        "joint_flow",
        False,
        "the four flows as one Diffrax solve (one shared step size: compiled "
        "once, each flow's drift then that of the shared steps)",
        "bool",
    ),
)

QUICK = dict(lrs=(0.04, 0.02), t1=0.4, joint_flow=True)

LAWS = {
    "diagonal": "u⊙v",
    "polar": "‖θ‖²",
    "deep-linear": "balancedness",
    "relu-two-layer": "‖in‖²−‖out‖²",
}


class _Case(NamedTuple):
    """One model of the job: its problem, initial model, polar rates (or None)
    and the conservation law Q, a function model → array."""

    problem: object
    model: object
    rates: object
    law: object


def _cases(s, key):
    k1, k2, k3 = jax.random.split(key, 3)
    sparse = problems.sparse_recovery(k1, n=10, d=30, sparsity=3)
    polar = models.PolarDiagonalNet(30, scale=s["scale"])
    student = problems.teacher_student(
        k2, n=20, d=4, teacher_width=2, activation="relu"
    )
    return {
        "diagonal": _Case(
            sparse,
            models.DiagonalNet(30, scale=s["scale"]),
            None,
            invariants.diagonal_balance,
        ),
        "polar": _Case(
            sparse,
            polar,
            polar.rates(s["ratio"]),
            invariants.polar_direction_norm,
        ),
        "deep-linear": _Case(
            problems.low_rank(k2, d_in=5, d_out=4, rank=2),
            models.DeepLinear((5, 6, 4), scale=s["scale"], key=k3),
            None,
            invariants.balancedness,
        ),
        "relu-two-layer": _Case(
            student,
            models.TwoLayer(4, 6, 1, activation="relu", scale=s["scale"], key=k3),
            None,
            invariants.unit_rescaling,
        ),
    }


def _ratio(row):
    """Measured over predicted drift (none for the flow)."""
    return None if row["predicted"] is None else row["drift"] / row["predicted"]


class InvariantsResult(ExperimentResult):
    """Rows (model, law, clock, drift at T, predicted, relative drift), per-model
    fits of the drift exponent, and the curves behind the figure: per model and
    lr the measured and predicted drift along GD (`MODEL/gd/LR/...`), and the
    flow's drift (`MODEL/gf/...`)."""

    FIGURE_COLUMNS = 2
    PANEL_SIZE = (5.5, 4.0)

    def columns(self):
        return (
            Column("model"),
            Column("law"),
            Column("clock"),
            Column("drift", "drift(T)", ".3e"),
            Column("predicted", fmt=".3e"),
            Column(_ratio, "ratio", ".4f"),
        )

    def notes(self):
        return [
            f"drift exponent in lr ({model}): {slope_text(fit)}  (expected 1 as η → 0)"
            for model, fit in self.fits.items()
        ]

    def figure_data(self):
        """The curves, drifts clipped to 1e-18 so an exact zero stays on the log
        axis."""
        return {
            name: np.maximum(value, 1e-18)
            if name.endswith(("/drift", "/predicted"))
            else value
            for name, value in self.curves.items()
        }

    def panels(self):
        """Per model, the drift of its law along GD at each lr (solid), the
        predicted drift (dashed) and the flow's drift (dotted)."""
        return [self._panel(model) for model in LAWS]

    def _panel(self, model):
        lrs = sorted(self.settings["lrs"])
        series = []
        for lr, colour in zip(lrs, shades("viridis", len(lrs), 0.1, 0.85)):
            key = f"{model}/gd/{lr:g}"
            series += [
                Series(
                    f"{key}/drift",
                    f"{key}/ts",
                    label=f"GD η={lr:g}",
                    skip=1,  # no drift at t = 0
                    options=dict(color=colour),
                ),
                Series(
                    f"{key}/predicted",
                    f"{key}/ts",
                    "--",
                    skip=1,
                    options=dict(color="0.3", lw=0.8),
                ),
            ]
        flow = Series(
            f"{model}/gf/drift", f"{model}/gf/ts", "k:", label="GF (Diffrax)", skip=1
        )
        return Panel(
            f"{model} (dashed: Σ η²/2 gᵀ∇²Q g)",
            [*series, flow],
            xlabel="time t = kη",
            ylabel=f"‖Δ {LAWS[model]}‖∞",
            yscale="log",
        )


def _descent_drifts(s, name, case, steps, scale, bar):
    """GD at each rate of the ladder, saved at every step: the drift of the law
    along the run and its prediction. Every rate runs the program of the longest
    run with its moves frozen after its own K = t1/lr steps (`MovesFor`, as in
    `dynamics.ladder_descent`), so one compiled descent and one compiled drift
    serve the whole ladder; each curve is then cut at step K (the prediction sums
    only the steps before it). **Returns:** rows and curves."""
    problem, model, rates, law = case
    longest = max(steps.values())
    rows, curves = [], {}
    for lr in s["lrs"]:
        k = steps[lr]
        traj = dynamics.gradient_descent(
            problem.loss,
            model,
            lr=lr,
            steps=longest,
            rates=rates,
            optimizer=dynamics.MovesFor(jnp.asarray(k, jnp.result_type(float))),
        )
        ts, drift, predicted = (
            x[: k + 1]
            for x in invariants.drift_curves(
                law, problem.loss, traj, lr=lr, rates=rates
            )
        )
        key = f"{name}/gd/{lr:g}"
        curves[f"{key}/ts"], curves[f"{key}/drift"] = ts, drift
        curves[f"{key}/predicted"] = predicted
        rows.append(
            dict(
                model=name,
                law=LAWS[name],
                clock=f"GD lr={lr:g}",
                drift=float(drift[-1]),
                predicted=float(predicted[-1]),
                relative=float(drift[-1] / scale),
            )
        )
        bar.update()
    return rows, curves


class _Summed(eqx.Module):
    """L(m₁, …, m_n) = Σᵢ Lᵢ(mᵢ), a loss of the tuple of models: its gradient
    flow is every model's own flow, on one clock."""

    losses: tuple

    def __call__(self, models):
        return sum(loss(model) for loss, model in zip(self.losses, models))


def _flow_drifts(s, cases):
    """The exact flows (Tsit5, 41 saves to t1): model → (ts, the drift of its law
    along its flow). With `joint_flow` the models' flows are one solve of the
    tuple of models under the summed loss (compiled once; its step size serves
    every model), else one solve each."""
    ts = jnp.linspace(0.0, s["t1"], 41)
    # raised to the floor a coarser dtype can meet (100·ε); float64 unchanged
    rtol, atol = attainable_tolerances(
        s["rtol"], s["atol"], params_dtype([c.model for c in cases.values()])
    )

    def flow(loss, model, rates):
        return dynamics.gradient_flow(
            loss,
            model,
            t1=s["t1"],
            ts=ts,
            rates=rates,
            solver=diffrax.Tsit5(),
            rtol=rtol,
            atol=atol,
        )

    if not s["joint_flow"]:
        return {
            name: invariants.flow_drift(
                case.law, flow(case.problem.loss, case.model, case.rates)
            )
            for name, case in cases.items()
        }
    joint = flow(
        _Summed(tuple(case.problem.loss for case in cases.values())),
        tuple(case.model for case in cases.values()),
        tuple(
            dynamics.uniform_rates(case.model) if case.rates is None else case.rates
            for case in cases.values()
        ),
    )
    return {
        name: invariants.flow_drift(
            case.law, eqx.tree_at(lambda t: t.models, joint, joint.models[i])
        )
        for i, (name, case) in enumerate(cases.items())
    }


def _flow_row(name, flow, scale):
    """The flow's row and curves, from its (ts, drift)."""
    ts, drift = flow
    row = dict(
        model=name,
        law=LAWS[name],
        clock="GF",
        drift=float(drift[-1]),
        predicted=None,
        relative=float(drift[-1] / scale),
    )
    return row, {f"{name}/gf/ts": ts, f"{name}/gf/drift": drift}


def _law_scale(law, model) -> float:
    """max |Q(θ₀)|, the scale of the `relative` drift (1e-300 if Q(θ₀) = 0)."""
    q0 = np.asarray(law(model)).ravel()
    return max(float(np.max(np.abs(q0))), 1e-300)


def run(settings, *, seed: int, progress: bool = True) -> InvariantsResult:
    """Run invariants with resolved `settings` (see `SETTINGS`)."""
    s = settings
    steps = ladder_steps(s["t1"], s["lrs"])
    cases = _cases(s, jax.random.key(seed))
    rows, fits, curves = [], {}, {}
    total = len(cases) * (len(s["lrs"]) + 1)
    with tqdm(total=total, desc=NAME, disable=not progress, leave=False) as bar:
        flows = _flow_drifts(s, cases)
        bar.update(len(cases))
        for name, case in cases.items():
            scale = _law_scale(case.law, case.model)
            gd_rows, gd_curves = _descent_drifts(s, name, case, steps, scale, bar)
            gf_row, gf_curves = _flow_row(name, flows[name], scale)
            rows += [*gd_rows, gf_row]
            curves.update({**gd_curves, **gf_curves})
            fits[name] = fit_against_lr(s["lrs"], [r["drift"] for r in gd_rows])
    curves["lrs"] = np.asarray(s["lrs"])
    return InvariantsResult(settings=s, rows=rows, fits=fits, curves=curves)
