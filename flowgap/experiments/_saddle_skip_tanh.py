r"""saddle-skip, part 3: tanh networks on anisotropic inputs, with why.

The part-2 inputs (covariance diag(j^(−decay)), eigenvalues over two decades)
and a two-unit tanh teacher y = A·tanh(Bx), A = U·diag(√s), B = diag(√s)·Vᵀ in
random orientations; the student is a width-2 tanh `TwoLayer`, so the teacher
is realisable and the final map is the teacher's. A jump cannot land on a tanh
saddle (it is not a reduced-rank regression solution): the whitened jump (the
rank-one minimiser of the quadratic model in a map E added to the output,
C = −σ'(0)·∂L/∂E with tanh'(0) = 1) lands near it, and each stage converges by
truncated Newton–CG (`saddle_skip(newton=True)`). Measured per plateau: the
saddle loss and σ₁(C), the skipper's evaluations in that round, the steps a GD
stage would take instead (capped), and, for GD from each α, the steps spent on
the plateau and how close it passes the saddle (its loss gap and smallest
‖∇L‖ there); then GD's final approach to the target.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import dynamics, models, problems
from .._draw import normal
from .._precision import attainable, params_dtype
from ._settings import Setting
from ._table import Column, render_table

SETTINGS = (
    Setting(
        "tanh_singular",
        (0.5, 0.1),
        "part 3: tanh teacher's unit sizes s (units √s·(u, v))",
        "floats",
        positive=True,
    ),
    Setting(
        "tanh_loss_target",
        1e-6,
        "part 3: both trainers stop below this loss",
        positive=True,
    ),
    Setting("tanh_steps", 40_000, "part 3: most GD steps per run", "int", minimum=1),
    Setting(
        "tanh_newton_iters",
        100,
        "part 3: most Newton steps per stage",
        "int",
        minimum=1,
    ),
    Setting(
        "tanh_stage_cap",
        20_000,
        "part 3: most steps of a GD stage after the same jumps (for comparison)",
        "int",
        minimum=1,
    ),
)


def tanh_teacher(key, *, n, d, out_dim, singular, decay):
    """Inputs as `teacher_problem`'s (XᵀX/n = diag(j^(−decay)) exactly) and
    y = A·tanh(Bx) with unit sizes √s (A = U·diag(√s), B = diag(√s)·Vᵀ)."""
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(normal(kx, (n, d)))
    x = jnp.sqrt(n) * q * jnp.arange(1, d + 1) ** (-decay / 2)
    u, _ = jnp.linalg.qr(normal(ku, (out_dim, out_dim)))
    v, _ = jnp.linalg.qr(normal(kv, (d, d)))
    root = jnp.sqrt(jnp.asarray(singular))
    units = len(singular)
    y = jnp.tanh(x @ (root[:, None] * v[:, :units].T).T) @ (u[:, :units] * root).T
    return problems.RegressionProblem(x, y, None)


def tanh_part(s, seed, timed) -> dict:
    """Rows per α (GD against the Newton-stage skipper: evaluations and wall
    times) and rows per plateau (the measured reasons)."""
    problem = tanh_teacher(
        jax.random.key(seed + 3),
        n=s["n"],
        d=s["d"],
        out_dim=s["out_dim"],
        singular=s["tanh_singular"],
        decay=s["aniso_decay"],
    )
    key = jax.random.key(seed + 1)
    template = _net(s, 1.0, key)
    dtype = params_dtype(template)
    grad_tol = attainable(s["grad_tol"], dtype)
    target = attainable(s["tanh_loss_target"], dtype)

    def skipper(newton, steps):
        return dynamics.saddle_skip(
            problem.loss,
            template,
            lr=s["lr"],
            grad_tol=grad_tol,
            loss_tol=target,  # the same final test as GD's
            stage_steps=steps,
            save_every=steps,
            whiten=True,
            newton=newton,
        )

    skip, skip_seconds = timed(lambda: skipper(True, s["tanh_newton_iters"]))
    if not skip.successful:
        raise RuntimeError(f"tanh skipper: {skip.message()}")
    # the same jumps with GD stages, capped: why the stages need Newton
    gd_stages = skipper(False, s["tanh_stage_cap"])
    gds = {
        scale: timed(lambda scale=scale: _descent(problem, s, scale, key, target))
        for scale in s["aniso_scales"]
    }
    rows = [_row(scale, *gds[scale], skip, skip_seconds) for scale in gds]
    plateaus = _plateaus(problem, skip, gd_stages, gds, s["lr"])
    return dict(rows=rows, plateaus=plateaus, target=target)


def _net(s, scale, key):
    width = len(s["tanh_singular"])  # as many units as the teacher: realisable
    return models.TwoLayer(
        s["d"], width, s["out_dim"], activation="tanh", scale=scale, key=key
    )


def _descent(problem, s, scale, key, target):
    gd = dynamics.gradient_descent(
        problem.loss,
        _net(s, scale, key),
        lr=s["lr"],
        steps=s["tanh_steps"],
        save_every=s["aniso_save_every"],
        stop_when=dynamics.LossBelow(target),
    )
    if gd.result != dynamics.RESULTS.event_occurred:
        raise RuntimeError(
            f"tanh GD from α={scale:g} did not reach loss {target:g} in "
            f"{s['tanh_steps']} steps; raise `tanh_steps`"
        )
    return gd


def _row(scale, gd, gd_seconds, skip, skip_seconds) -> dict:
    gd_evals = int(gd.stats["num_grad_evals"])
    evals = int(skip.stats["num_grad_evals"])
    return dict(
        scale=scale,
        gd_evals=gd_evals,
        skip_evals=evals,
        skip_hvps=int(skip.stats["num_hvps"]),
        ratio=gd_evals / evals,
        gd_seconds=gd_seconds,
        skip_seconds=skip_seconds,
        time_ratio=gd_seconds / skip_seconds,
        gd_loss=float(gd.final_loss),
        skip_loss=float(skip.final_loss),
    )


def _plateaus(problem, skip, gd_stages, gds, lr) -> list[dict]:
    """Per saddle r ≥ 1 before the target (the origin is GD's start, not a
    plateau it passes): the saddle loss, σ₁(C), the skipper's evaluations from
    saddle r−1's probe to saddle r's (jump, Newton stage, probe), the capped GD
    stage's steps (None: not converged), and for GD from each α the steps
    between the halfway losses either side of the saddle, the loss gap at its
    smallest ‖∇L‖ there, and that ‖∇L‖. A last row: GD's steps from leaving
    the last plateau to the target."""
    losses = np.asarray(skip.stats["saddle_loss"])
    clock = np.asarray(skip.stats["saddle_grad_evals"])
    capped = np.asarray(gd_stages.stats["stage_steps"])
    stage_done = len(capped) - (0 if gd_stages.successful else 1)
    curves = {a: _curve(problem, gd, lr) for a, (gd, _) in gds.items()}
    rows = []
    for r in range(1, len(losses) - 1):
        window = (0.5 * (losses[r - 1] + losses[r]), 0.5 * (losses[r] + losses[r + 1]))
        rows.append(
            dict(
                plateau=r,
                saddle_loss=float(losses[r]),
                sigma=float(skip.stats["saddle_eigenvalue"][r]),
                skip_evals=int(clock[r] - clock[r - 1]),
                newton_steps=int(skip.stats["stage_steps"][r - 1]),
                gd_stage=int(capped[r - 1]) if r - 1 < stage_done else None,
                **_visit(curves, window, losses[r]),
            )
        )
    last = 0.5 * (losses[-2] + losses[-1])
    final = {
        f"{a:g}": int(steps[-1] - steps[np.flatnonzero(loss < last)[0]])
        for a, (steps, loss, *_) in curves.items()
    }
    rows.append(
        dict(
            plateau=len(losses) - 1,
            saddle_loss=float(losses[-1]),
            sigma=float(skip.stats["saddle_eigenvalue"][-1]),
            skip_evals=int(clock[-1] - clock[-2]),
            newton_steps=int(skip.stats["stage_steps"][-1]),
            gd_stage=int(capped[-1]) if len(capped) == stage_done else None,
            plateau_steps=final,
            gap={},
            grad={},
            share={},
        )
    )
    return rows


def _curve(problem, gd, lr):
    """GD's saved (steps, losses, ‖∇L‖, each save's ratio of its smaller to its
    larger unit's input-weight norm)."""
    keep = np.flatnonzero(np.isfinite(np.asarray(gd.loss)))
    saved = jax.tree.map(lambda x: x[keep], gd.models)
    norms = _grad_norms(problem.loss, saved)
    steps = np.rint(np.asarray(gd.ts)[keep] / lr).astype(int)
    units = np.sort(np.linalg.norm(np.asarray(saved.w1), axis=2), axis=1)
    share = units[:, 0] / units[:, -1]
    return steps, np.asarray(gd.loss)[keep], np.asarray(norms), share


@eqx.filter_jit
def _grad_norms(loss, stacked):
    """‖∇L‖ at every model of a stack (compiled: eager, the per-op dispatch of
    a vmapped gradient costs more than the GD run)."""
    return jax.vmap(lambda m: optax.tree.norm(jax.grad(loss)(m)))(stacked)


def _visit(curves, window, saddle) -> dict:
    """GD's passage of one saddle, per α: steps with the loss inside `window`
    (above, below), and at the smallest ‖∇L‖ there the loss gap, ‖∇L‖ and the
    smaller unit's share."""
    out = dict(plateau_steps={}, gap={}, grad={}, share={})
    for a, (steps, loss, norms, share) in curves.items():
        inside = np.flatnonzero((loss < window[0]) & (loss > window[1]))
        i = inside[np.argmin(norms[inside])]
        out["plateau_steps"][f"{a:g}"] = int(steps[inside[-1]] - steps[inside[0]])
        out["gap"][f"{a:g}"] = float(loss[i] - saddle)
        out["grad"][f"{a:g}"] = float(norms[i])
        out["share"][f"{a:g}"] = float(share[i])
    return out


def tables(part, scales) -> list[str]:
    """Part 3's two tables: the cost per α, the reasons per plateau."""
    cost = render_table(
        part["rows"],
        (
            Column("scale", "α", ".0e"),
            Column("gd_evals", "GD evals", "d"),
            Column("skip_evals", "skip evals", "d"),
            Column("skip_hvps", "of which HVPs", "d"),
            Column("ratio", "GD/skip", ".0f"),
            Column(lambda r: 1e3 * r["gd_seconds"], "GD ms", ".1f"),
            Column(lambda r: 1e3 * r["skip_seconds"], "skip ms", ".1f"),
            Column("time_ratio", "GD/skip time", ".1f"),
            Column("gd_loss", "GD loss", ".2e"),
            Column("skip_loss", "skip loss", ".2e"),
        ),
        title=f"part 3, tanh: GD to loss {part['target']:g} against the whitened "
        "skipper with Newton stages (evals include every probe; an HVP counts as 2)",
    )
    reasons = render_table(
        part["plateaus"],
        (
            Column("plateau", "rank"),
            Column("saddle_loss", "saddle loss", ".6g"),
            Column("sigma", "σ₁(C)", ".3g"),
            Column("skip_evals", "skip evals", "d"),
            Column("newton_steps", "Newton steps", "d"),
            Column("gd_stage", "GD stage steps", "d"),
            *(
                Column(
                    lambda r, a=f"{a:g}", k=key: r[k].get(a), f"{head}, α={a:g}", fmt
                )
                for key, head, fmt in (
                    ("plateau_steps", "GD steps there", "d"),
                    ("gap", "GD loss gap", ".1e"),
                    ("grad", "GD min ‖∇L‖", ".1e"),
                    ("share", "GD unit 2/unit 1", ".3f"),
                )
                for a in scales
            ),
        ),
        title="part 3, per plateau (last row: the final approach to the target): "
        "where the evaluations go",
    )
    return [cost, reasons]
