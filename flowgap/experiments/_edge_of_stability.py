r"""edge-of-stability: full-batch GD drives sharpness to 2/η and then leaves the flow.

A tanh MLP is fitted to a teacher–student regression by full-batch GD at a few
learning rates and by the exact flow. Along each GD run the sharpness λ_max(∇²L)
is tracked (Lanczos on Hessian-vector products, warm-started save to save). The
job reports when sharpness first exceeds 2/η and when GD departs from GF (the
first save where |L_GD − L_GF| > `threshold`·L_GF), as in Cohen et al. (2021).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError

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
    Setting("iters", 20, "Lanczos steps per sharpness estimate", "int", minimum=2),
)

QUICK = dict(lrs=(0.4, 0.1), t1=40.0, saves=20)


def _first_time(ts, mask):
    mask = np.asarray(mask)
    return float(np.asarray(ts)[np.argmax(mask)]) if mask.any() else None


@dataclasses.dataclass
class EdgeOfStabilityResult:
    """Per learning rate: max sharpness, when it crossed 2/η, when GD departed from
    GF, and the final losses; curves for the figure."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'lr':>6} {'2/lr':>6} {'max λ':>8} {'t(λ>2/lr)':>10} "
            f"{'t(depart)':>10} {'GD loss':>10} {'GF loss':>10}"
        )
        lines = [head, "-" * len(head)]
        fmt = lambda t: "never" if t is None else f"{t:.4g}"  # noqa: E731
        for r in self.rows:
            lines.append(
                f"{r['lr']:>6g} {2 / r['lr']:>6g} {r['max_sharpness']:>8.3f} "
                f"{fmt(r['cross_time']):>10} {fmt(r['depart_time']):>10} "
                f"{r['gd_loss']:>10.3e} {r['gf_loss']:>10.3e}"
            )
        lines.append("")
        lines.append(
            "GD departs from GF only after its sharpness has reached 2/lr: "
            + ("yes" if self.fits["departs_after_crossing"] else "no")
        )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
        colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(self.settings["lrs"])))
        for lr, colour in zip(self.settings["lrs"], colours):
            key = f"{lr:g}"
            a.plot(
                self.curves[f"{key}/ts"],
                self.curves[f"{key}/sharpness"],
                color=colour,
                label=f"GD η={lr:g}",
            )
            a.axhline(2 / lr, color=colour, ls="--", lw=0.8)
            b.semilogy(
                self.curves[f"{key}/ts"],
                self.curves[f"{key}/loss"],
                color=colour,
                label=f"GD η={lr:g}",
            )
        b.semilogy(self.curves["gf/ts"], self.curves["gf/loss"], "k--", label="GF")
        a.set(
            xlabel="time t = kη",
            ylabel="sharpness λ_max(∇²L)",
            title="sharpness (dashed: 2/η)",
        )
        b.set(xlabel="time t = kη", ylabel="training loss", title="GD against GF")
        a.legend(fontsize=8)
        b.legend(fontsize=8)
        fig.tight_layout()
        return fig


def run(settings: dict, *, seed: int, progress: bool = True) -> EdgeOfStabilityResult:
    s = settings
    steps = {}
    for lr in s["lrs"]:
        k = s["t1"] / lr
        if abs(k - round(k)) > 1e-9 * k or round(k) % s["saves"]:
            raise SettingError(
                f"setting `lrs`: t1/lr = {k:g} for lr = {lr:g} must be a whole number "
                f"of steps divisible by saves = {s['saves']}"
            )
        steps[lr] = int(round(k))
    k1, k2 = jax.random.split(jax.random.key(seed))
    problem = problems.teacher_student(
        k1, n=s["n"], d=s["d"], teacher_width=8, activation="tanh", decay=0.5
    )
    model = models.MLP(
        s["d"], s["width"], 1, depth=s["depth"], activation="tanh", key=k2
    )
    ts = jnp.linspace(0.0, s["t1"], s["saves"] + 1)
    flow = dynamics.gradient_flow(
        problem.loss,
        model,
        t1=s["t1"],
        ts=ts,
        rtol=1e-8,
        atol=1e-10,
        max_steps=1_000_000,
    )
    curves = {"gf/ts": np.asarray(ts), "gf/loss": np.asarray(flow.loss)}
    rows = []
    for lr in tqdm(s["lrs"], desc=NAME, disable=not progress, leave=False):
        gd = dynamics.gradient_descent(
            problem.loss,
            model,
            lr=lr,
            steps=steps[lr],
            save_every=steps[lr] // s["saves"],
        )
        sharp = np.asarray(analysis.track_sharpness(problem.loss, gd, iters=s["iters"]))
        gd_loss, gf_loss = np.asarray(gd.loss), np.asarray(flow.loss)
        depart = ~(np.abs(gd_loss - gf_loss) <= s["threshold"] * gf_loss)
        rows.append(
            dict(
                lr=lr,
                max_sharpness=float(np.nanmax(sharp)),
                cross_time=_first_time(gd.ts, sharp > 2 / lr),
                depart_time=_first_time(gd.ts, depart),
                gd_loss=float(gd.final_loss),
                gf_loss=float(flow.final_loss),
            )
        )
        curves[f"{lr:g}/ts"], curves[f"{lr:g}/loss"] = np.asarray(gd.ts), gd_loss
        curves[f"{lr:g}/sharpness"] = sharp
    ordered = all(
        r["depart_time"] is None
        or (r["cross_time"] is not None and r["cross_time"] <= r["depart_time"])
        for r in rows
    )
    return EdgeOfStabilityResult(
        settings=dict(s),
        rows=rows,
        fits={"departs_after_crossing": ordered},
        curves=curves,
    )
