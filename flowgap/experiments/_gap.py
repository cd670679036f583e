r"""gap: gap exponents of gradient descent against the flow and its modified flows.

For a diagonal net (sparse recovery), a deep linear net (low-rank target) and a
tanh two-layer net (teacher–student), GD at a ladder of learning rates is compared
at the horizon T with the gradient flow and the order-1 and order-2 modified flows
(docs: theory/one-clock). Backward error analysis predicts log–log slopes 1, 2
and 3; the table gives the fitted slopes with 95% confidence intervals.

In a dtype coarser than float64 the flows are solved at the tolerance it can
meet (rtol = 100·ε, 1.2e-5 in float32), and a gap below rtol·‖θ₀‖ is the flow's
own error, not the step's: such points are left out of the fit and named in the
notes (in float64, at rtol 1e-13, none is).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, models, problems
from .._precision import attainable_tolerances, params_dtype
from ._figure import Panel, Series
from ._ladder import label_lrs
from ._result import ExperimentResult
from ._settings import Setting, SettingError
from ._table import Column

NAME = "gap"

SETTINGS = (
    Setting(
        "lrs",
        (0.1, 0.05, 0.025, 0.0125),
        "GD learning rates; each must divide t1",
        "floats",
        positive=True,
    ),
    Setting("t1", 1.0, "horizon T (time units, t = k·lr)", positive=True),
    Setting("scale", 0.5, "init scale of every model", positive=True),
    Setting("rtol", 1e-13, "flow relative tolerance (Dopri8)", positive=True),
    Setting("atol", 1e-13, "flow absolute tolerance (Dopri8)", positive=True),
)

QUICK = dict(lrs=(0.05, 0.025, 0.0125, 0.00625), t1=0.5)

ORDERS = {0: "GF", 1: "order-1 modified flow", 2: "order-2 modified flow"}


def _cases(s, key):
    k1, k2 = jax.random.split(key)
    return {
        "diagonal": (
            problems.sparse_recovery(k1, n=10, d=30, sparsity=2),
            models.DiagonalNet(30, scale=s["scale"]),
        ),
        "deep-linear": (
            problems.low_rank(k1, d_in=4, d_out=3, rank=1),
            models.DeepLinear((4, 5, 3), scale=s["scale"], key=k2),
        ),
        "tanh-two-layer": (
            problems.teacher_student(k1, n=20, d=4, teacher_width=3, activation="tanh"),
            models.TwoLayer(4, 6, 1, activation="tanh", scale=s["scale"], key=k2),
        ),
    }


def _norm(model) -> float:
    """‖θ‖₂ over the model's floating-point arrays (on the host: eager JAX would
    compile a program per leaf shape)."""
    leaves = [
        np.asarray(x)
        for x in jax.tree.leaves(model)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return float(np.sqrt(sum(np.sum(x**2) for x in leaves)))


def _resolved_fit(lrs, gaps, resolved, fit) -> dict:
    """`fit` when every gap is resolved, else the straight log–log fit on the
    resolved ones (NaN with fewer than two)."""
    if resolved.all():
        return fit
    if resolved.sum() >= 2:
        return analysis.loglog_slope(lrs[resolved], gaps[resolved])
    nan = math.nan
    return dict(slope=nan, intercept=nan, stderr=nan, ci=(nan, nan), correction=0.0)


class GapResult(ExperimentResult):
    """Per model and flow order (GF, order-1 and order-2 modified flows): the
    fitted log–log slope of the gap against lr with its 95% interval (`rows`,
    `fits`) and the gaps over the ladder (`curves`: `MODEL/ORDER`)."""

    def notes(self):
        notes = []
        for row in self.rows:
            unresolved = row.get("unresolved_lrs", [])
            if unresolved:
                notes.append(
                    f"{row['model']} against {row['against']}: the gaps at η = "
                    + ", ".join(f"{lr:g}" for lr in unresolved)
                    + " are below the flow's accuracy (rtol·‖θ₀‖ = "
                    f"{row['resolution']:.1e}), round-off of the dtype: left out "
                    "of the fit"
                )
        return notes

    def columns(self):
        return (
            Column("model"),
            Column("against"),
            Column("slope", fmt=".3f"),
            Column("ci", "95% CI", ".3f"),
            Column("expected"),
        )

    def _fit(self, model, order):
        # fits reloaded from results.json have their orders as text
        fits = self.fits[model]
        return fits[order] if order in fits else fits[str(order)]

    def figure_data(self):
        """The curves, plus each fitted line `MODEL/ORDER/fit` over the rates."""
        lrs = np.asarray(self.settings["lrs"])
        data = dict(self.curves)
        for model in self.fits:
            for order in ORDERS:
                fit = self._fit(model, order)
                line = np.exp(fit["intercept"]) * lrs ** fit["slope"]
                data[f"{model}/{order}/fit"] = line
        return data

    def panels(self):
        """Per model, the gap at T against lr for each flow order, with its fit."""
        return [self._panel(model) for model in self.fits]

    def _panel(self, model):
        series = []
        for order, marker, colour in zip(ORDERS, "os^", ("C0", "C1", "C2")):
            slope = self._fit(model, order)["slope"]
            series += [
                Series(
                    f"{model}/{order}",
                    "lrs",
                    marker,
                    label=f"{ORDERS[order]}: {slope:.2f}",
                    options=dict(color=colour),
                ),
                Series(
                    f"{model}/{order}/fit",
                    "lrs",
                    options=dict(color=colour, alpha=0.5),
                ),
            ]
        return Panel(
            f"{model} (expected slopes 1, 2, 3)",
            series,
            xlabel="learning rate η",
            ylabel=f"‖θ_GD − θ_flow‖ at T={self.settings['t1']:g}",
            xscale="log",
            yscale="log",
            draw=label_lrs,
        )


def run(settings, *, seed: int, progress: bool = True) -> GapResult:
    """Run gap with resolved `settings` (see `SETTINGS`)."""
    s = settings
    if len(s["lrs"]) < 2:
        raise SettingError("setting `lrs` needs at least two learning rates")
    cases = _cases(s, jax.random.key(seed))
    rows, fits, curves = [], {}, {}
    for name, (problem, model) in tqdm(
        cases.items(), desc=NAME, disable=not progress, leave=False
    ):
        # 1e-13 is far below float32's reach (its flows crawl on round-off);
        # raised to the floor a coarser dtype can meet, float64 unchanged
        rtol, atol = attainable_tolerances(s["rtol"], s["atol"], params_dtype(model))
        try:
            table = analysis.gap_exponent(
                problem.loss, model, lrs=s["lrs"], t1=s["t1"], rtol=rtol, atol=atol
            )
        except ValueError as err:
            raise SettingError(f"setting `lrs`: {err}") from None
        # a gap below the flow's own error, rtol·‖θ‖, does not measure the step
        resolution = rtol * _norm(model)
        fits[name] = {}
        for order, gaps in table.gaps.items():
            resolved = gaps > resolution
            fit = _resolved_fit(table.lrs, gaps, resolved, table.fits[order])
            fits[name][order] = fit
            curves[f"{name}/{order}"] = gaps
            rows.append(
                dict(
                    model=name,
                    against=ORDERS[order],
                    slope=fit["slope"],
                    ci=fit["ci"],
                    expected=order + 1,
                    unresolved_lrs=table.lrs[~resolved].tolist(),
                    resolution=resolution,
                )
            )
    curves["lrs"] = np.asarray(s["lrs"])
    return GapResult(settings=s, rows=rows, fits=fits, curves=curves)
