r"""saddle-skip, part 2: the three jump rules on anisotropic inputs, with why.

Inputs with covariance Σ = diag(j^(−decay)) (eigenvalues over two decades) and a
low-rank teacher W* in random orientations. At a saddle the top singular pair of
C = (W* − W)Σ leans towards the large input directions, while the next saddle
(the reduced-rank regression solution) leans towards the small ones. A jump along
C's pair (fixed or line-searched size) therefore lands off the saddle, and the GD
stage spends O(1/(ηλ_min)) steps turning the unit; the whitened jump (the
rank-one minimiser of the stage's quadratic model) lands on it. Measured per
plateau: the saddle loss and σ₁(C), the cosine between the two jump directions
(the new unit's input weights), the GD steps each rule's stage took, and the
step where plain GD leaves the plateau, from each init scale.
"""

import jax
import numpy as np

from .. import dynamics, models
from .._precision import attainable, params_dtype
from ._settings import SettingError

RULES = ("fixed", "line_search", "whiten")


def anisotropic(s, seed, teacher_problem, timed) -> dict:
    """Rows per α (evaluations and wall times of GD and the three rules) and
    rows per plateau (the measured reasons)."""
    if len(s["aniso_singular"]) > s["width"]:
        raise SettingError(
            "setting `aniso_singular` needs at most `width` values (the student "
            "must reach the teacher's map)"
        )
    problem = teacher_problem(
        jax.random.key(seed + 2),
        n=s["n"],
        d=s["d"],
        out_dim=s["out_dim"],
        singular=s["aniso_singular"],
        decay=s["aniso_decay"],
    )
    width = s["width"]  # part 1's: the shapes, and so the draws, are shared
    key = jax.random.key(seed + 1)
    template = _net(s, width, 1.0, key)
    grad_tol = attainable(s["grad_tol"], params_dtype(template))
    target = attainable(s["aniso_loss_target"], params_dtype(template))
    skips, seconds = {}, {}
    for rule in RULES:
        # only the whitened rule is timed (the goal); the others are counted
        run = timed if rule == "whiten" else _untimed
        skips[rule], seconds[rule] = run(
            lambda rule=rule: dynamics.saddle_skip(
                problem.loss,
                template,
                lr=s["lr"],
                jump=s["jump"],
                grad_tol=grad_tol,
                loss_tol=target,  # the same final test as GD's
                stage_steps=s["aniso_steps"],
                save_every=s["aniso_steps"],  # a stage's end only
                line_search=rule == "line_search",
                whiten=rule == "whiten",
            )
        )
        if not skips[rule].successful:
            raise RuntimeError(f"anisotropic {rule}: {skips[rule].message()}")
    gds = {}
    for scale in s["aniso_scales"]:
        gds[scale] = timed(
            lambda scale=scale: _descent(problem, s, _net(s, width, scale, key), target)
        )
    rows = [_row(scale, *gds[scale], skips, seconds) for scale in s["aniso_scales"]]
    plateaus = _plateaus(skips, gds, s["lr"])
    return dict(rows=rows, plateaus=plateaus, target=target)


def _untimed(train):
    return train(), float("nan")


def _net(s, width, scale, key):
    return models.TwoLayer(
        s["d"], width, s["out_dim"], activation="linear", scale=scale, key=key
    )


def _descent(problem, s, net, target):
    gd = dynamics.gradient_descent(
        problem.loss,
        net,
        lr=s["lr"],
        steps=s["aniso_steps"],
        save_every=s["aniso_save_every"],
        stop_when=dynamics.LossBelow(target),
    )
    if gd.result != dynamics.RESULTS.event_occurred:
        raise RuntimeError(
            "anisotropic GD did not reach loss {target:g} in "
            f"{s['aniso_steps']} steps; raise `aniso_steps`"
        )
    return gd


def _row(scale, gd, gd_seconds, skips, seconds) -> dict:
    evals = {rule: int(skips[rule].stats["num_grad_evals"]) for rule in RULES}
    gd_evals = int(gd.stats["num_grad_evals"])
    return dict(
        scale=scale,
        gd_evals=gd_evals,
        **{f"{rule}_evals": evals[rule] for rule in RULES},
        whiten_hvps=int(skips["whiten"].stats["num_hvps"]),
        ratio=gd_evals / evals["whiten"],
        gd_seconds=gd_seconds,
        whiten_seconds=seconds["whiten"],
        time_ratio=gd_seconds / seconds["whiten"],
        gd_loss=float(gd.final_loss),
        whiten_loss=float(skips["whiten"].final_loss),
    )


def _plateaus(skips, gds, lr) -> list[dict]:
    """Per saddle r before the last: its loss and σ₁(C), the cosine between the
    fixed and whitened jumps' input directions, each rule's stage steps, and the
    step where GD from each α first falls halfway to the next saddle's loss."""
    white = skips["whiten"]
    losses = np.asarray(white.stats["saddle_loss"])
    rows = []
    for r in range(len(losses) - 1):
        directions = [_jump_direction(skips[rule], r) for rule in ("fixed", "whiten")]
        halfway = 0.5 * (losses[r] + losses[r + 1])
        rows.append(
            dict(
                plateau=r,
                saddle_loss=float(losses[r]),
                sigma=float(white.stats["saddle_eigenvalue"][r]),
                cosine=float(abs(directions[0] @ directions[1])),
                **{
                    f"{rule}_steps": int(skips[rule].stats["stage_steps"][r])
                    for rule in RULES
                },
                escapes={
                    f"{scale:g}": _first_below(gd, halfway, lr)
                    for scale, (gd, _) in gds.items()
                },
            )
        )
    return rows


def _jump_direction(traj, r):
    """Unit r's input weights right after jump r, normalised."""
    landing = int(traj.stats["saddle_index"][r]) + 1
    row = np.asarray(traj.models.w1[landing, r])
    return row / np.linalg.norm(row)


def _first_below(gd, level, lr):
    """The first saved GD step (t/η) with loss below `level` (None if none)."""
    keep = np.isfinite(np.asarray(gd.loss))
    below = np.flatnonzero(np.asarray(gd.loss)[keep] < level)
    return (
        int(round(float(np.asarray(gd.ts)[keep][below[0]]) / lr))
        if below.size
        else None
    )
