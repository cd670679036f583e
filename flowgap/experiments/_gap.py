r"""gap: gap exponents of gradient descent against the flow and its modified flows.

For a diagonal net (sparse recovery), a deep linear net (low-rank target) and a
tanh two-layer net (teacher–student), GD at a ladder of learning rates is compared
at the horizon T with the gradient flow and the order-1 and order-2 modified flows
(docs: theory/one-clock). Backward error analysis predicts log–log slopes 1, 2 and 3;
the
table gives the fitted slopes with 95% confidence intervals.
"""

import dataclasses

import jax
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, models, problems
from ._settings import Setting, SettingError

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


@dataclasses.dataclass
class GapResult:
    """Per model, a `GapTable`; `rows` and `fits` in plain numbers."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'model':<15} {'against':<22} {'slope':>7} {'95% CI':>18} {'expected':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            low, high = r["ci"]
            lines.append(
                f"{r['model']:<15} {r['against']:<22} {r['slope']:>7.3f} "
                f"[{low:>6.3f}, {high:>6.3f}] {r['expected']:>8d}"
            )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, NullFormatter

        models_ = sorted({r["model"] for r in self.rows}, key=list(self.fits).index)
        fig, axes = plt.subplots(1, len(models_), figsize=(5 * len(models_), 4.2))
        lrs = np.asarray(self.settings["lrs"])
        for ax, model in zip(np.atleast_1d(axes), models_):
            for order, marker in zip(ORDERS, ("o", "s", "^")):
                gaps = self.curves[f"{model}/{order}"]
                fit = self.fits[model][order]
                ax.loglog(
                    lrs, gaps, marker, label=f"{ORDERS[order]}: {fit['slope']:.2f}"
                )
                ax.loglog(
                    lrs,
                    np.exp(fit["intercept"]) * lrs ** fit["slope"],
                    "-",
                    color=ax.lines[-1].get_color(),
                    alpha=0.5,
                )
            ax.set(
                xlabel="learning rate η",
                ylabel=f"‖θ_GD − θ_flow‖ at T={self.settings['t1']:g}",
                title=f"{model} (expected slopes 1, 2, 3)",
            )
            ax.xaxis.set_minor_locator(LogLocator(subs="all"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def run(settings: dict, *, seed: int, progress: bool = True) -> GapResult:
    s = settings
    if len(s["lrs"]) < 2:
        raise SettingError("setting `lrs` needs at least two learning rates")
    cases = _cases(s, jax.random.key(seed))
    rows, fits, curves = [], {}, {}
    for name, (problem, model) in tqdm(
        cases.items(), desc=NAME, disable=not progress, leave=False
    ):
        try:
            table = analysis.gap_exponent(
                problem.loss,
                model,
                lrs=s["lrs"],
                t1=s["t1"],
                rtol=s["rtol"],
                atol=s["atol"],
            )
        except ValueError as err:
            raise SettingError(f"setting `lrs`: {err}") from None
        fits[name] = table.fits
        for order, fit in table.fits.items():
            curves[f"{name}/{order}"] = table.gaps[order]
            rows.append(
                dict(
                    model=name,
                    against=ORDERS[order],
                    slope=fit["slope"],
                    ci=fit["ci"],
                    expected=order + 1,
                )
            )
    curves["lrs"] = np.asarray(s["lrs"])
    return GapResult(settings=dict(s), rows=rows, fits=fits, curves=curves)
