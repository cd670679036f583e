r"""edge-of-stability: full-batch GD drives sharpness to 2/η and then leaves the flow.

A tanh MLP is fitted to a teacher–student regression by full-batch GD at a few
learning rates and by the exact flow. Along each GD run the sharpness λ_max(∇²L)
is tracked (Lanczos on Hessian-vector products, warm-started save to save). The
job reports when sharpness first exceeds 2/η and when GD departs from GF (the
first save where |L_GD − L_GF| > `threshold`·L_GF), as in Cohen et al. (2021).
"""

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from .._precision import attainable_tolerances, params_dtype
from ._figure import Line, Panel, Series, shades
from ._ladder import ladder_steps
from ._result import ExperimentResult
from ._settings import Setting
from ._table import Column

NAME = "edge-of-stability"

SETTINGS = (
    Setting("n", 64, "training points", "int", minimum=1),
    Setting("d", 5, "input dimension", "int", minimum=1),
    Setting("width", 32, "hidden width of the MLP", "int", minimum=1),
    Setting("depth", 2, "hidden layers of the MLP", "int", minimum=1),
    Setting(
        "lrs",
        (0.4, 0.25, 0.1),
        "GD learning rates; each must divide t1",
        "floats",
        positive=True,
    ),
    Setting("t1", 200.0, "horizon T (time units, t = k·lr)", positive=True),
    Setting(
        "saves",
        100,
        "saved points per run; must divide each step count",
        "int",
        minimum=2,
    ),
    Setting(
        "threshold", 0.1, "relative loss gap that counts as departure", positive=True
    ),
    Setting(
        "iters",
        20,
        "most Lanczos steps per sharpness estimate (it stops on its residual)",
        "int",
        minimum=2,
    ),
)

QUICK = dict(lrs=(0.4, 0.1), t1=40.0, saves=20)


def _first_time(ts, mask):
    mask = np.asarray(mask)
    return float(np.asarray(ts)[np.argmax(mask)]) if mask.any() else None


class EdgeOfStabilityResult(ExperimentResult):
    """Per learning rate (`rows`): max sharpness, when it crossed 2/η, when GD
    departed from GF, and the final losses; `fits`: whether every departure came
    after its crossing; `curves`: each GD run's saved times, losses and
    sharpness (`LR/...`) and the flow's losses (`gf/...`)."""

    PANEL_SIZE = (6.0, 4.4)

    def columns(self):
        return (
            Column("lr", fmt="g"),
            Column(lambda row: 2 / row["lr"], "2/lr", "g"),
            Column("max_sharpness", "max λ", ".3f"),
            Column("cross_time", "t(λ>2/lr)", ".4g", missing="never"),
            Column("depart_time", "t(depart)", ".4g", missing="never"),
            Column("gd_loss", "GD loss", ".3e"),
            Column("gf_loss", "GF loss", ".3e"),
        )

    def notes(self):
        ordered = "yes" if self.fits["departs_after_crossing"] else "no"
        return [
            f"GD departs from GF only after its sharpness has reached 2/lr: {ordered}"
        ]

    def panels(self):
        """Sharpness along each GD run against its threshold 2/η, and the GD
        losses against the flow's."""
        lrs = self.settings["lrs"]
        colours = shades("viridis", len(lrs), 0.1, 0.85)
        sharpness, losses, thresholds = [], [], []
        for lr, colour in zip(lrs, colours):
            run = dict(label=f"GD η={lr:g}", options=dict(color=colour))
            sharpness.append(Series(f"{lr:g}/sharpness", f"{lr:g}/ts", **run))
            losses.append(Series(f"{lr:g}/loss", f"{lr:g}/ts", **run))
            thresholds.append(Line(2 / lr, options=dict(color=colour, ls="--", lw=0.8)))
        losses.append(Series("gf/loss", "gf/ts", "k--", label="GF"))
        return (
            Panel(
                "sharpness (dashed: 2/η)",
                sharpness,
                thresholds,
                xlabel="time t = kη",
                ylabel="sharpness λ_max(∇²L)",
            ),
            Panel(
                "GD against GF",
                losses,
                xlabel="time t = kη",
                ylabel="training loss",
                yscale="log",
            ),
        )


def _setup(s, seed):
    """The teacher–student problem and the tanh MLP drawn from `seed`."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    problem = problems.teacher_student(
        k1, n=s["n"], d=s["d"], teacher_width=8, activation="tanh", decay=0.5
    )
    model = models.MLP(
        s["d"], s["width"], 1, depth=s["depth"], activation="tanh", key=k2
    )
    return problem, model


def _descent(s, problem, model, flow, lr, steps):
    """GD at `lr` with its sharpness tracked save to save and compared with the
    flow. **Returns:** its row and curves."""
    gd = dynamics.gradient_descent(
        problem.loss, model, lr=lr, steps=steps, save_every=steps // s["saves"]
    )
    sharp = np.asarray(analysis.track_sharpness(problem.loss, gd, iters=s["iters"]))
    gd_loss, gf_loss = np.asarray(gd.loss), np.asarray(flow.loss)
    depart = ~(np.abs(gd_loss - gf_loss) <= s["threshold"] * gf_loss)
    row = dict(
        lr=lr,
        max_sharpness=float(np.nanmax(sharp)),
        cross_time=_first_time(gd.ts, sharp > 2 / lr),
        depart_time=_first_time(gd.ts, depart),
        gd_loss=float(gd.final_loss),
        gf_loss=float(flow.final_loss),
    )
    key = f"{lr:g}"
    curves = {f"{key}/ts": np.asarray(gd.ts), f"{key}/loss": gd_loss}
    curves[f"{key}/sharpness"] = sharp
    return row, curves


def _departs_after_crossing(rows) -> bool:
    """Whether every run that left the flow had crossed 2/η by then."""
    return all(
        r["depart_time"] is None
        or (r["cross_time"] is not None and r["cross_time"] <= r["depart_time"])
        for r in rows
    )


def run(settings, *, seed: int, progress: bool = True) -> EdgeOfStabilityResult:
    """Run edge-of-stability with resolved `settings` (see `SETTINGS`)."""
    s = settings
    steps = ladder_steps(s["t1"], s["lrs"], s["saves"])
    problem, model = _setup(s, seed)
    ts = jnp.linspace(0.0, s["t1"], s["saves"] + 1)
    # 1e-8 in float64; a coarser dtype's floor (100·ε) otherwise
    rtol, atol = attainable_tolerances(1e-8, 1e-10, params_dtype(model))
    flow = dynamics.gradient_flow(
        problem.loss,
        model,
        t1=s["t1"],
        ts=ts,
        rtol=rtol,
        atol=atol,
        max_steps=1_000_000,
    )
    curves = {"gf/ts": np.asarray(ts), "gf/loss": np.asarray(flow.loss)}
    rows = []
    for lr in tqdm(s["lrs"], desc=NAME, disable=not progress, leave=False):
        row, gd_curves = _descent(s, problem, model, flow, lr, steps[lr])
        rows.append(row)
        curves.update(gd_curves)
    return EdgeOfStabilityResult(
        settings=s,
        rows=rows,
        fits={"departs_after_crossing": _departs_after_crossing(rows)},
        curves=curves,
    )
