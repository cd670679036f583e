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

import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import dynamics, models, problems
from .._draw import normal
from .._precision import attainable, params_dtype
from . import _saddle_skip_tanh as tanh
from ._figure import Line, Panel, Series
from ._result import ExperimentResult
from ._saddle_skip_aniso import anisotropic
from ._settings import Config, Setting, SettingError
from ._table import Column, render_table

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
    Setting(
        "aniso_decay",
        2.6,
        "part 2: input covariance diag(j^-decay), eigenvalues over two decades",
        positive=True,
    ),
    Setting(
        "aniso_singular",
        (4.0, 0.25),
        "part 2: singular values of the low-rank teacher (rank ≤ width)",
        "floats",
        positive=True,
    ),
    Setting(
        "aniso_scales",
        (1e-8, 1e-12),
        "part 2: GD init scales α",
        "floats",
        positive=True,
    ),
    Setting(
        "aniso_loss_target",
        1e-10,
        "part 2: GD stops below this loss (map within √(2L/λ_min) of W*)",
        positive=True,
    ),
    Setting("aniso_steps", 20_000, "part 2: most GD steps per run / per stage", "int"),
    Setting("aniso_save_every", 10, "part 2: GD saves every this many steps", "int"),
    *tanh.SETTINGS,
)

QUICK = dict(scales=(1e-2, 1e-5, 1e-8, 1e-12), max_steps=4000, tanh_stage_cap=2000)


def teacher_problem(key, *, n, d, out_dim, singular, decay):
    """Inputs X = √n·Q·diag(j^(−decay/2)) (Q orthonormal columns, so
    XᵀX/n = diag(j^(−decay)) exactly) and y = W*x, W* = U diag(s) Vᵀ."""
    rank = len(singular)
    if rank > min(d, out_dim) or d > n:
        raise SettingError(
            "setting `singular` needs at most min(d, out_dim) values and `n` ≥ `d`"
        )
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(normal(kx, (n, d)))  # float64 draw, cast
    x = jnp.sqrt(n) * q * jnp.arange(1, d + 1) ** (-decay / 2)
    u, _ = jnp.linalg.qr(normal(ku, (out_dim, out_dim)))
    v, _ = jnp.linalg.qr(normal(kv, (d, d)))
    truth = (u[:, :rank] * jnp.asarray(singular)) @ v[:, :rank].T
    return problems.RegressionProblem(x, x @ truth.T, truth)


class SaddleSkipResult(ExperimentResult):
    """`rows`: one per α (GD evals, skipper evals, ratios, final losses);
    `fits`: GD evals against ln(1/α) (slope, intercept) and the predicted slope
    1/ln(1 + η σ_last); `curves`: loss against gradient evaluations."""

    PANEL_SIZE = (6.0, 4.4)

    def columns(self):
        return (
            Column("scale", "α", ".0e"),
            Column("gd_evals", "GD evals", "d"),
            Column("skip_evals", "skip evals", "d"),
            Column("ratio", "ratio", ".2f"),
            Column("skip_ls_evals", "skip+ls evals", "d"),
            Column("ratio_ls", "ratio", ".1f"),
            Column(lambda r: 1e3 * r["gd_seconds"], "GD ms", ".1f"),
            Column(lambda r: 1e3 * r["skip_seconds"], "skip ms", ".1f"),
            Column(lambda r: 1e3 * r["skip_ls_seconds"], "skip+ls ms", ".1f"),
            Column("gd_loss", "GD loss", ".4e"),
            Column("skip_loss", "skip loss", ".4e"),
        )

    def notes(self):
        f = self.fits
        saddles = ", ".join(f"{v:.6g}" for v in f["saddle_loss"])
        return (
            f"GD evals ≈ {f['slope']:.2f}·ln(1/α) + {f['intercept']:.1f} "
            f"(predicted slope 1/ln(1 + ησ_last) = {f['predicted_slope']:.2f})",
            f"skipper saddle losses: {saddles}",
        )

    def table(self) -> str:
        """Part 1 (whitened inputs), then part 2 (anisotropic inputs): the cost
        per α and, per plateau, the measured reasons."""
        aniso = self.fits["anisotropic"]
        part2 = render_table(
            aniso["rows"],
            _ANISO_COLUMNS,
            title="part 2, anisotropic inputs: GD to loss "
            f"{aniso['target']:g} against the three jump rules "
            "(evals include every probe; an HVP counts as 2)",
        )
        plateaus = render_table(
            aniso["plateaus"],
            _plateau_columns(self.settings["aniso_scales"]),
            title="part 2, per plateau: why a jump along C's top pair does not pay",
        )
        part3 = tanh.tables(self.fits["tanh"], self.settings["aniso_scales"])
        return "\n\n".join((super().table(), part2, plateaus, *part3))

    def figure_data(self):
        """The curves, with ln(1/α) and the fitted line of GD evals on it."""
        logs = np.log(1 / np.asarray(self.curves["scales"]))
        fit = self.fits["slope"] * logs + self.fits["intercept"]
        return {**self.curves, "log_inverse_scale": logs, "gd_evals_fit": fit}

    def panels(self):
        c, f = self.curves, self.fits
        cost = Panel(
            title="cost to the same final loss",
            series=(
                Series("gd_evals", "log_inverse_scale", "o", "plain GD from scale α"),
                Series(
                    "gd_evals_fit",
                    "log_inverse_scale",
                    label=f"fit: slope {f['slope']:.2f}",
                    options=dict(color="C0"),
                ),
            ),
            lines=(
                Line(
                    float(c["skip_evals"]),
                    label=f"saddle_skip, ε={self.settings['jump']:g}",
                    options=dict(color="C1", ls="-"),
                ),
                Line(
                    float(c["skip_ls_evals"]),
                    label="saddle_skip, line search",
                    options=dict(color="C2", ls="--"),
                ),
            ),
            xlabel="ln(1/α)",
            ylabel="gradient evaluations",
        )
        staircase = Panel(
            title="staircase vs skipped plateaus (dotted: saddle losses)",
            series=(
                Series("gd_loss", "gd_ts", label=f"GD, α={float(c['gd_scale']):g}"),
                Series("skip_loss", "skip_ts", label="saddle_skip"),
                Series("skip_ls_loss", "skip_ls_ts", label="saddle_skip (line search)"),
            ),
            lines=tuple(
                Line(v, options=dict(color="grey", lw=0.6))
                for v in f["saddle_loss"][1:]
            ),
            xlabel="gradient evaluations",
            ylabel="training loss",
            yscale="log",
        )
        return (cost, staircase)


_ANISO_COLUMNS = (
    Column("scale", "α", ".0e"),
    Column("gd_evals", "GD evals", "d"),
    Column("fixed_evals", "fixed", "d"),
    Column("line_search_evals", "line search", "d"),
    Column("whiten_evals", "whitened", "d"),
    Column("ratio", "GD/whitened", ".0f"),
    Column(lambda r: 1e3 * r["gd_seconds"], "GD ms", ".1f"),
    Column(lambda r: 1e3 * r["whiten_seconds"], "whitened ms", ".1f"),
    Column("time_ratio", "GD/whitened time", ".1f"),
    Column("gd_loss", "GD loss", ".2e"),
)


def _plateau_columns(scales):
    return (
        Column("plateau", "rank"),
        Column("saddle_loss", "saddle loss", ".5g"),
        Column("sigma", "σ₁(C)", ".3f"),
        Column("cosine", "cos(fixed, whitened)", ".3f"),
        Column("fixed_steps", "fixed stage", "d"),
        Column("line_search_steps", "line-search stage", "d"),
        Column("whiten_steps", "whitened stage", "d"),
        *(
            Column(lambda r, a=f"{a:g}": r["escapes"][a], f"GD leaves, α={a:g}", "d")
            for a in scales
        ),
    )


def run(settings: Config, *, seed: int, progress: bool = True) -> SaddleSkipResult:
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
    skips, seconds = _skippers(problem, s, init_key)
    # in a coarser dtype the loss is resolved to ~ε·L only: the gap is raised
    dtype = params_dtype(skips["skip"].final)
    target = float(skips["skip"].final_loss) + attainable(s["loss_gap"], dtype)
    rows, gd_evals, curves = [], [], {}
    for scale in tqdm(s["scales"], desc=NAME, disable=not progress, leave=False):
        gd, gd_seconds = _descent(problem, s, scale, init_key, target)
        rows.append(_row(scale, gd, gd_seconds, skips, seconds))
        gd_evals.append(rows[-1]["gd_evals"])
        if scale == min(s["scales"]):
            keep = np.isfinite(np.asarray(gd.loss))
            curves["gd_ts"] = np.asarray(gd.ts)[keep] / s["lr"]
            curves["gd_loss"] = np.asarray(gd.loss)[keep]
            curves["gd_scale"] = np.asarray(scale)
    curves.update(_skip_curves(s, gd_evals, skips))
    fits = _fits(s, gd_evals, skips["skip"])
    fits["anisotropic"] = anisotropic(s, seed, teacher_problem, _timed)
    fits["tanh"] = tanh.tanh_part(s, seed, _timed)
    return SaddleSkipResult(settings=s, rows=rows, fits=fits, curves=curves)


def _net(s, scale, key):
    return models.TwoLayer(
        s["d"], s["width"], s["out_dim"], activation="linear", scale=scale, key=key
    )


def _skippers(problem, s, init_key):
    """The plateau-skipping trainer with a fixed jump ("skip") and with a line
    search ("skip_ls"): name → trajectory, and name → seconds."""
    template = _net(s, 1.0, init_key)
    skips, seconds = {}, {}
    for name in ("skip", "skip_ls"):
        skips[name], seconds[name] = _timed(
            lambda name=name: dynamics.saddle_skip(
                problem.loss,
                template,
                lr=s["lr"],
                jump=s["jump"],
                grad_tol=attainable(s["grad_tol"], params_dtype(template)),
                stage_steps=s["max_steps"],
                line_search=name == "skip_ls",
            )
        )
    for name, traj in skips.items():
        if not traj.successful:
            raise RuntimeError(f"{name}: {traj.message()}")
    return skips, seconds


def _descent(problem, s, scale, init_key, target):
    """Plain GD from init scale `scale`, stopped once its loss is below `target`:
    (trajectory, seconds)."""
    net = _net(s, scale, init_key)
    gd, seconds = _timed(
        lambda: dynamics.gradient_descent(
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
    return gd, seconds


def _row(scale, gd, gd_seconds, skips, seconds) -> dict:
    """One table row: gradient evaluations, wall times and final losses."""
    evals = int(gd.stats["num_grad_evals"])
    n_skip = int(skips["skip"].stats["num_grad_evals"])
    n_ls = int(skips["skip_ls"].stats["num_grad_evals"])
    return dict(
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


def _fits(s, gd_evals, skip) -> dict:
    """GD evals against ln(1/α) fitted by a line, the predicted slope
    1/ln(1 + ησ_last) (σ_last the smallest learned singular value), and the
    skipper's saddles."""
    logs = np.log(1 / np.asarray(s["scales"]))
    slope, intercept = np.polyfit(logs, np.asarray(gd_evals, float), 1)
    learned = sorted(s["singular"], reverse=True)[: s["width"]]
    return dict(
        slope=float(slope),
        intercept=float(intercept),
        predicted_slope=float(1 / np.log1p(s["lr"] * learned[-1])),
        saddle_loss=[float(v) for v in skip.stats["saddle_loss"]],
        saddle_rank=[int(v) for v in skip.stats["saddle_rank"]],
    )


def _skip_curves(s, gd_evals, skips) -> dict:
    return dict(
        scales=np.asarray(s["scales"]),
        gd_evals=np.asarray(gd_evals),
        skip_evals=np.asarray(int(skips["skip"].stats["num_grad_evals"])),
        skip_ls_evals=np.asarray(int(skips["skip_ls"].stats["num_grad_evals"])),
        skip_ts=np.asarray(skips["skip"].ts),
        skip_loss=np.asarray(skips["skip"].loss),
        skip_ls_ts=np.asarray(skips["skip_ls"].ts),
        skip_ls_loss=np.asarray(skips["skip_ls"].loss),
    )


def _timed(train):
    """(trajectory, seconds) of `train()`, timed on a second call so that
    compilation is not counted (both calls compute the same run)."""
    jax.block_until_ready(train())
    start = time.perf_counter()
    traj = jax.block_until_ready(train())
    return traj, time.perf_counter() - start
