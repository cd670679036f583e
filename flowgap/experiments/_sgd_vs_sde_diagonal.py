r"""sgd-vs-sde, part (b): the implicit bias of SGD, label-noise GD and the SDE on
a depth-2 diagonal network (sparse regression, n < d).

With β = u² − v², ∇_u L_B = 2u⊙g and ∇_v L_B = −2v⊙g for g = ∇_β L_B, so one
step of any of these descents (any gradient g_k) is u ← u⊙(1 − 2ηg_k),
v ← v⊙(1 + 2ηg_k), and

$$u_\infty\odot v_\infty = \alpha^2\prod_k\big(1 - 4\eta^2 g_k^{\odot 2}\big)
  =: \alpha_{\text{eff}}^{\odot 2},$$

per coordinate, exactly. The direction ln(u/v) = Σ_k ln((1 − 2ηg_k)/(1 + 2ηg_k))
= −4ηΣ_k g_k + O(η³Σ_k g_k³) lies in range(Xᵀ) only up to the cubic terms, so
the limit is the Woodworth minimiser at the per-coordinate scale α_eff up to
that. (For the Itô SDE, d ln(u/v) = −4(g dt + noise) lies in range(Xᵀ) exactly;
its u⊙v shrinks by the Itô correction instead.)
"""

import jax
import numpy as np

from ._sgd_vs_sde_diagonal_runs import (
    descents,
    full_losses,
    last_save,
    mean_summary,
    sde_paths,
    shrinkages,
    sparse_problem,
    summary,
    woodworth_ladder,
)

#: the runs of part (b), in the table's order
METHODS = {
    "gd": "GD",
    "sgd": "SGD",
    "label-noise": "label-noise GD",
    "sde": "SDE order 1",
}


def methods(problem, s, key) -> dict:
    """Each method's summary (see `summary`), averaged over keys where it has
    several, and the saved losses of its first run."""
    runs = descents(problem, s, key)
    shrink = shrinkages(problem, s, runs)
    scale = s["diag_scale"]
    keys = range(s["diag_keys"])

    def at(models_, i):
        return jax.tree.map(lambda x: x[i], models_)

    found = {"gd": summary(problem, last_save(runs["gd"]), scale, shrink["gd"])}
    found["sgd"] = mean_summary(
        [
            summary(problem, last_save(at(runs["sgd"], i)), scale, shrink["sgd"][i])
            for i in keys
        ]
    )
    found["label-noise"] = mean_summary(
        [
            summary(problem, last_save(at(runs["clean"], i)), scale, shrink["noisy"][i])
            for i in keys
        ]
    )
    sde, sde_times, sde_losses = sde_paths(problem, s, key)
    found["sde"] = mean_summary([summary(problem, at(sde, i), scale) for i in keys])
    found["sde"]["times"], found["sde"]["losses"] = sde_times, sde_losses
    found["gd"]["losses"] = full_losses(problem, runs["gd"])
    found["sgd"]["losses"] = full_losses(problem, at(runs["sgd"], 0))
    found["label-noise"]["losses"] = np.concatenate(
        [
            full_losses(problem, at(runs["noisy"], 0)),
            full_losses(problem, at(runs["clean"], 0))[1:],
        ]
    )
    return found


_ROW_FIELDS = (
    "loss",
    "l1",
    "l1_sd",
    "recovery",
    "alpha_min",
    "alpha_median",
    "woodworth",
    "identity",
    "flipped",
)


def measure(s, key) -> tuple[list, dict, dict]:
    """Part (b): its rows, fits and curves (keys `diagonal/...`)."""
    k_problem, k_runs = jax.random.split(key)
    problem = sparse_problem(k_problem, s)
    found = methods(problem, s, k_runs)
    ladder = woodworth_ladder(problem, s, k_runs)
    rows = [
        dict(
            part="diagonal",
            method=label,
            **{f: found[name].get(f) for f in _ROW_FIELDS},
        )
        for name, label in METHODS.items()
    ]
    rows += [
        dict(
            part="woodworth",
            lr=float(lr),
            **{
                f"{m}_{f}": float(ladder[m][f][j])
                for m in ("sgd", "gd")
                for f in ("woodworth", "l1", "loss")
            },
        )
        for j, lr in enumerate(ladder["lrs"])
    ]
    fits = dict(
        l1={label: found[name]["l1"] for name, label in METHODS.items()},
        identity=float(
            np.max([found[n]["identity"] for n in ("gd", "sgd", "label-noise")])
        ),
        woodworth_slope={m: ladder[m]["fit"]["slope"] for m in ("sgd", "gd")},
        woodworth_ci={m: tuple(ladder[m]["fit"]["ci"]) for m in ("sgd", "gd")},
    )
    return rows, fits, _curves(problem, s, found, ladder)


def _curves(problem, s, found, ladder) -> dict:
    lr = s["diag_lr"]
    curves = {"truth": np.asarray(problem.truth), "lrs": ladder["lrs"]}
    for name in METHODS:
        losses = found[name]["losses"]
        curves[f"{name}/losses"] = losses
        curves[f"{name}/alpha_eff"] = np.sort(found[name]["alpha_eff"])
        curves[f"{name}/beta"] = found[name]["beta"]
        off = np.abs(found[name]["beta"])[np.asarray(problem.truth) == 0]
        curves[f"{name}/off_support"] = np.sort(off)[::-1]
        if name != "sde":
            curves[f"{name}/times"] = np.arange(losses.size) * lr
    curves["sde/times"] = found["sde"]["times"]
    for m in ("sgd", "gd"):
        fit = ladder[m]["fit"]
        curves[f"woodworth/{m}"] = ladder[m]["woodworth"]
        curves[f"woodworth/{m}/fit"] = (
            np.exp(fit["intercept"]) * ladder["lrs"] ** fit["slope"]
        )
    return {f"diagonal/{k}": np.asarray(v) for k, v in curves.items()}
