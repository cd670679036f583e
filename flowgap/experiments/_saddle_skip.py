r"""saddle-skip: gradient evaluations of small-init GD vs the plateau-skipping trainer.

A linear two-layer net f(x) = W₂W₁x (width m) fits a teacher y = W*x with
W* = U diag(s) Vᵀ on inputs with covariance diag(j^(−decay)) (decay 0: XᵀX/n = I
exactly). Plain GD from init scale α spends ≈ ln(1/α)/ln(1 + ησ) steps on the
plateau before the mode with singular value σ is learned (docs:
theory/saddle-to-saddle), so its
count grows linearly in ln(1/α); `dynamics.saddle_skip` starts at the origin
saddle and jumps along each saddle's top eigenvector, so its count does not
depend on α. Each GD run stops when its loss is within `loss_gap` of the
skipper's final loss; the table counts every gradient evaluated by each
(`stats["num_grad_evals"]`, the stopping gradients included) and their wall
times, each measured on a second, already compiled call.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import dynamics, models, problems
from ._settings import Setting, SettingError

NAME = "saddle-skip"

SETTINGS = (
    Setting("d", 6, "input dimension", "int", minimum=1),
    Setting("out_dim", 4, "output dimension k", "int", minimum=1),
    Setting("n", 60, "samples", "int", minimum=1),
    Setting("width", 3, "hidden units m of the student", "int", minimum=1),
    Setting(
        "singular",
        (4.0, 1.0, 0.25, 0.1),
        "teacher singular values s",
        "floats",
        positive=True,
    ),
    Setting("decay", 0.0, "input covariance diag(j^-decay); 0 = whitened"),
    Setting(
        "scales",
        (1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12),
        "GD init scales α",
        "floats",
        positive=True,
    ),
    Setting("lr", 0.2, "GD step η (both trainers)", positive=True),
    Setting(
        "jump", 1e-2, "skipper's jump size ε (rank-one piece ε·uvᵀ)", positive=True
    ),
    Setting("grad_tol", 1e-9, "stage ends when ‖∇L‖ < grad_tol", positive=True),
    Setting(
        "loss_gap", 1e-7, "GD stops within this of the skipper's loss", positive=True
    ),
    Setting("max_steps", 20_000, "most GD steps per run / per stage", "int", minimum=1),
)

QUICK = dict(scales=(1e-2, 1e-5, 1e-8, 1e-12), max_steps=4000)


def teacher_problem(key, *, n, d, out_dim, singular, decay):
    """Inputs X = √n·Q·diag(j^(−decay/2)) (Q orthonormal columns, so
    XᵀX/n = diag(j^(−decay)) exactly) and y = W*x, W* = U diag(s) Vᵀ."""
    rank = len(singular)
    if rank > min(d, out_dim) or d > n:
        raise SettingError(
            "setting `singular` needs at most min(d, out_dim) values and `n` ≥ `d`"
        )
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (n, d)))
    x = jnp.sqrt(n) * q * jnp.arange(1, d + 1) ** (-decay / 2)
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (out_dim, out_dim)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (d, d)))
    truth = (u[:, :rank] * jnp.asarray(singular)) @ v[:, :rank].T
    return problems.RegressionProblem(x, x @ truth.T, truth)


@dataclasses.dataclass
class SaddleSkipResult:
    """`rows`: one per α (GD evals, skipper evals, ratios, final losses);
    `fits`: GD evals against ln(1/α) (slope, intercept) and the predicted slope
    1/ln(1 + η σ_last); `curves`: loss against gradient evaluations."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        head = (
            f"{'α':>8} {'GD evals':>9} {'skip evals':>11} {'ratio':>7} "
            f"{'skip+ls evals':>14} {'ratio':>7} {'GD ms':>8} {'skip ms':>8} "
            f"{'skip+ls ms':>11} {'GD loss':>11} {'skip loss':>11}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['scale']:>8.0e} {r['gd_evals']:>9d} {r['skip_evals']:>11d} "
                f"{r['ratio']:>7.2f} {r['skip_ls_evals']:>14d} {r['ratio_ls']:>7.1f} "
                f"{1e3 * r['gd_seconds']:>8.1f} {1e3 * r['skip_seconds']:>8.1f} "
                f"{1e3 * r['skip_ls_seconds']:>11.1f} "
                f"{r['gd_loss']:>11.4e} {r['skip_loss']:>11.4e}"
            )
        f = self.fits
        lines += [
            "",
            f"GD evals ≈ {f['slope']:.2f}·ln(1/α) + {f['intercept']:.1f} "
            f"(predicted slope 1/ln(1 + ησ_last) = {f['predicted_slope']:.2f})",
            f"skipper saddle losses: {', '.join(f'{v:.6g}' for v in f['saddle_loss'])}",
        ]
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        c = self.curves
        ax = axes[0]
        logs = np.log(1 / c["scales"])
        ax.plot(logs, c["gd_evals"], "o", label="plain GD from scale α")
        f = self.fits
        ax.plot(
            logs,
            f["slope"] * logs + f["intercept"],
            "-",
            color="C0",
            label=f"fit: slope {f['slope']:.2f}",
        )
        ax.axhline(
            c["skip_evals"],
            color="C1",
            label=f"saddle_skip, ε={self.settings['jump']:g}",
        )
        ax.axhline(
            c["skip_ls_evals"], color="C2", ls="--", label="saddle_skip, line search"
        )
        ax.set(
            xlabel="ln(1/α)",
            ylabel="gradient evaluations",
            title="cost to the same final loss",
        )
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.semilogy(c["gd_ts"], c["gd_loss"], label=f"GD, α={c['gd_scale']:g}")
        ax.semilogy(c["skip_ts"], c["skip_loss"], label="saddle_skip")
        ax.semilogy(
            c["skip_ls_ts"], c["skip_ls_loss"], label="saddle_skip (line search)"
        )
        for v in f["saddle_loss"][1:]:
            ax.axhline(v, color="grey", lw=0.6, ls=":")
        ax.set(
            xlabel="gradient evaluations",
            ylabel="training loss",
            title="staircase vs skipped plateaus (dotted: saddle losses)",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def run(settings: dict, *, seed: int, progress: bool = True) -> SaddleSkipResult:
    """Run saddle-skip with resolved `settings` (see `SETTINGS`)."""
    s = settings
    problem = teacher_problem(
        jax.random.key(seed),
        n=s["n"],
        d=s["d"],
        out_dim=s["out_dim"],
        singular=s["singular"],
        decay=s["decay"],
    )
    init_key = jax.random.key(seed + 1)
    template = models.TwoLayer(
        s["d"], s["width"], s["out_dim"], activation="linear", scale=1.0, key=init_key
    )
    skips, seconds = {}, {}
    for name in ("skip", "skip_ls"):
        skips[name], seconds[name] = _timed(
            lambda name=name: dynamics.saddle_skip(
                problem.loss,
                template,
                lr=s["lr"],
                jump=s["jump"],
                grad_tol=s["grad_tol"],
                stage_steps=s["max_steps"],
                line_search=name == "skip_ls",
            )
        )
    for name, traj in skips.items():
        if not traj.successful:
            raise RuntimeError(f"{name}: {traj.message()}")
    target = float(skips["skip"].final_loss) + s["loss_gap"]
    rows, gd_evals, curves = [], [], {}
    for scale in tqdm(s["scales"], desc=NAME, disable=not progress, leave=False):
        net = models.TwoLayer(
            s["d"],
            s["width"],
            s["out_dim"],
            activation="linear",
            scale=scale,
            key=init_key,
        )
        gd, gd_seconds = _timed(
            lambda net=net: dynamics.gradient_descent(
                problem.loss,
                net,
                lr=s["lr"],
                steps=s["max_steps"],
                stop_when=dynamics.LossBelow(target),
            )
        )
        if gd.result != dynamics.RESULTS.event_occurred:
            raise RuntimeError(
                f"GD from α={scale:g} did not reach loss {target:.6g} in "
                f"{s['max_steps']} steps; raise `max_steps`"
            )
        evals = int(gd.stats["num_grad_evals"])
        gd_evals.append(evals)
        n_skip = int(skips["skip"].stats["num_grad_evals"])
        n_ls = int(skips["skip_ls"].stats["num_grad_evals"])
        rows.append(
            dict(
                scale=scale,
                gd_evals=evals,
                skip_evals=n_skip,
                ratio=evals / n_skip,
                skip_ls_evals=n_ls,
                ratio_ls=evals / n_ls,
                gd_seconds=gd_seconds,
                skip_seconds=seconds["skip"],
                skip_ls_seconds=seconds["skip_ls"],
                gd_loss=float(gd.final_loss),
                skip_loss=float(skips["skip"].final_loss),
                skip_ls_loss=float(skips["skip_ls"].final_loss),
            )
        )
        if scale == min(s["scales"]):
            keep = np.isfinite(np.asarray(gd.loss))
            curves["gd_ts"] = np.asarray(gd.ts)[keep] / s["lr"]
            curves["gd_loss"] = np.asarray(gd.loss)[keep]
            curves["gd_scale"] = np.asarray(scale)
    logs = np.log(1 / np.asarray(s["scales"]))
    slope, intercept = np.polyfit(logs, np.asarray(gd_evals, float), 1)
    learned = sorted(s["singular"], reverse=True)[: s["width"]]
    fits = dict(
        slope=float(slope),
        intercept=float(intercept),
        predicted_slope=float(1 / np.log1p(s["lr"] * learned[-1])),
        saddle_loss=[float(v) for v in skips["skip"].stats["saddle_loss"]],
        saddle_rank=[int(v) for v in skips["skip"].stats["saddle_rank"]],
    )
    curves.update(
        scales=np.asarray(s["scales"]),
        gd_evals=np.asarray(gd_evals),
        skip_evals=np.asarray(int(skips["skip"].stats["num_grad_evals"])),
        skip_ls_evals=np.asarray(int(skips["skip_ls"].stats["num_grad_evals"])),
        skip_ts=np.asarray(skips["skip"].ts),
        skip_loss=np.asarray(skips["skip"].loss),
        skip_ls_ts=np.asarray(skips["skip_ls"].ts),
        skip_ls_loss=np.asarray(skips["skip_ls"].loss),
    )
    return SaddleSkipResult(settings=dict(s), rows=rows, fits=fits, curves=curves)


def _timed(train):
    """(trajectory, seconds) of `train()`, timed on a second call so that
    compilation is not counted (both calls compute the same run)."""
    jax.block_until_ready(train())
    start = time.perf_counter()
    traj = jax.block_until_ready(train())
    return traj, time.perf_counter() - start
