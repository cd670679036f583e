r"""wn-robust-bias: is the polar diagonal net's sparse bias robust to the init scale?

Sparse recovery (Gaussian X ∈ ℝ^{n×d}, n < d, s-sparse β*, y = Xβ*) is fitted by
the plain `DiagonalNet` and by the `PolarDiagonalNet` with the normalisation on the
stacked w = (u; v) ("polar") or on u and v separately ("polar-split"), at depths 2
and 3, from u = v = α·1, for init scales α over several decades and rate ratios
ρ = η_θ/η_r. Each is trained to L < `tol` by the exact gradient flow (Diffrax's
Tsit5 on the weights' logarithms, where the polar flow is not stiff:
`_wn_robust_bias_log`; Kvaerno5 where Tsit5 runs out of steps) and by gradient
descent (plain GD; for the polar nets the projected "rPGD" and the
Salimans–Kingma variant) at the local step η = `step`·2/λ_max(P^½∇²L P^½)
(rates P: 1 on the radius, ρ on the direction), re-estimated by Lanczos every
`segment` steps, within a budget of `steps` accepted steps, extended on a
linear tail to what its rate needs, up to `steps_cap` (`_wn_robust_bias_steps`).
It reports the recovery error ‖β_∞ − β*‖, the time / steps to converge, and the
theory (docs: theory/implicit-bias): the Woodworth Q_α minimiser for the plain
depth-2 net, and for the polar flow the plain limit from the effective scale
α_eff = α(r_∞/r₀)exp(−(ρ/2)(r_∞² − r₀²)) computed from the measured final radius.

Every (family, depth, method) is one compiled program vmapped over the (α, ρ)
grid (`flowgap.sweep`): scales and ratios are traced.
"""

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import problems
from ._settings import Setting, SettingError
from ._sweepable import Sweepable
from ._wn_robust_bias_report import WNRobustBiasResult as WNRobustBiasResult
from ._wn_robust_bias_rows import findings as findings
from ._wn_robust_bias_rows import limit_gaps, rows_for
from ._wn_robust_bias_rows import lookup as lookup
from ._wn_robust_bias_train import (
    FAMILIES,
    METHODS,
    attainable,
    check_settings,
    grid_run,
    polar_steps,
    theory,
)
from ._wn_robust_bias_train import learning_rate as learning_rate
from ._wn_robust_bias_train import train as train

NAME = "wn-robust-bias"

SETTINGS = (
    Setting("n", 25, "number of measurements (rows of X)", "int", minimum=1),
    Setting("d", 60, "dimension of β", "int", minimum=1),
    Setting("sparsity", 3, "non-zeros in β*", "int", minimum=1),
    Setting("depths", (2.0, 3.0), "network depths L (integers ≥ 2)", "floats"),
    Setting(
        "scales",
        (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        "init scales α (u = v = α·1)",
        "floats",
        positive=True,
    ),
    Setting(
        "ratios",
        (0.1, 1.0, 10.0, 100.0),
        "polar rate ratios ρ = η_θ/η_r",
        "floats",
        positive=True,
    ),
    Setting(
        "ratio",
        10.0,
        "the ρ of the per-model panels (must be one of `ratios`)",
        positive=True,
    ),
    Setting(
        "families",
        "plain,polar,polar-split",
        "comma-separated subset of plain, polar, polar-split",
        "str",
    ),
    Setting("tol", 1e-10, "convergence: stop once L < tol", positive=True),
    Setting(
        "step",
        0.5,
        "GD step, as a fraction of the local stability bound 2/λ_max(P^½∇²L P^½)",
        positive=True,
    ),
    Setting(
        "segment",
        50,
        "GD steps between re-estimates of the local step (Lanczos)",
        "int",
        minimum=1,
    ),
    Setting("steps", 100000, "GD budget: accepted steps per point", "int", minimum=1),
    Setting(
        "steps_cap",
        5000000,
        "largest GD budget: a run that spends `steps` on a linear tail continues "
        "to 1.25× the steps it needs at its rate, at most this",
        "int",
        minimum=1,
    ),
    # In log coordinates a plateau costs the explicit solver few steps, so the
    # horizon can hold the depth-3 saddles' escapes (measured up to t ≈ 1.6e5).
    Setting("t1", 1e9, "gradient-flow horizon (it stops at L < tol)", positive=True),
    Setting("rtol", 1e-10, "gradient-flow relative tolerance", positive=True),
    Setting("atol", 1e-12, "gradient-flow absolute tolerance", positive=True),
    Setting("max_steps", 200000, "Tsit5 step budget per run", "int", minimum=1),
    # The default grid's Kvaerno5 re-solves that converge take up to 22,622
    # steps (split depth-2 net, α = 1e-3, ρ = 100); the budget leaves 1/3 over.
    Setting(
        "implicit_steps",
        30000,
        "Kvaerno5 step budget where Tsit5 ran out of steps (each step costs "
        "Jacobian solves)",
        "int",
        minimum=1,
    ),
    Setting("model", "polar", "model of `flowgap sweep`", "str", choices=FAMILIES),
    Setting(
        "method",
        "gf",
        "method of `flowgap sweep` (gf, gd for plain, rpgd/sk for polar)",
        "str",
        choices=("gf", "gd", "rpgd", "sk"),
    ),
    Setting("depth", 2, "depth of `flowgap sweep`", "int", minimum=2),
)

QUICK = dict(
    n=10,
    d=30,
    sparsity=2,
    depths=(2.0, 3.0),
    scales=(1e-3, 1e-1, 1.0),
    ratios=(1.0, 10.0),
    families="plain,polar",
)


def point(settings, *, key, scale, ratio):
    """One `flowgap sweep` point: `model`/`method`/`depth` of the settings on the
    problem drawn by `key`, at α = `scale`, ρ = `ratio`.

    **Returns:** `recovery_error`, `final_loss`, `time`, `steps`, `alpha_eff`,
    `implicit` (1 where the flow needed Kvaerno5), `converged` (1 where L < tol)
    and `status` (0 when the run ended normally, else its `RESULTS` code).
    """
    _check_method(settings["model"], settings["method"])
    problem = _problem(key, settings)
    s, _ = attainable(settings, problem)
    out = train(
        problem,
        scale,
        ratio,
        family=s["model"],
        method=s["method"],
        depth=s["depth"],
        settings=s,
    )
    return dict(
        recovery_error=out["recovery_error"],
        final_loss=out["final_loss"],
        time=out["time"],
        steps=out["steps"],
        alpha_eff=out["alpha_eff"][0],
        implicit=out["implicit"].astype(jnp.int32),
        converged=out["converged"].astype(jnp.int32),
        status=jnp.where(out["successful"], 0, out["status"]),
    )


SWEEP = Sweepable(axes=("scale", "ratio"), point=point, metric="recovery_error")


def _check_method(family, method):
    if method not in METHODS[family]:
        raise SettingError(
            f"setting `method`: {method} is not a method of the {family} net; use "
            f"one of {', '.join(METHODS[family])}"
        )


def _problem(key, s):
    return problems.sparse_recovery(key, n=s["n"], d=s["d"], sparsity=s["sparsity"])


#: The grids each (family, depth, method) keeps in `curves`, by their names there.
_CURVES = dict(
    recovery_error="recovery_error",
    lr_min="lr_min",
    lr_max="lr_max",
    steps_needed="steps_needed",
    time="time",
    steps="steps",
    status="status",
    converged="converged",
    efolding_time="efolding_time",
    escape_time="escape_time",
    settle_time="settle_time",
    implicit="implicit",
    alpha_eff="alpha_eff",
    r_inf="radius",
    support="support",
    support_gap="support_gap",
)


def run(settings, *, seed: int, progress: bool = True) -> WNRobustBiasResult:
    """Run wn-robust-bias with resolved `settings` (see `SETTINGS`).

    Tolerances below what the dtype resolves are raised (`attainable`); the
    values used are in `fits["precision"]`, with the dtype's ε."""
    depths, families = check_settings(settings)
    problem = _problem(jax.random.key(seed), settings)
    s, raised = attainable(settings, problem)
    jobs = [(f, L, m) for L in depths for f in families for m in METHODS[f]]
    rows, curves = [], {}
    bar = tqdm(jobs, desc=NAME, disable=not progress, leave=False)
    steps = {}  # rPGD and SK of one (family, depth): one program, run once
    for family, depth, method in bar:
        bar.set_postfix_str(f"{family} L={depth} {method}")
        if method in ("rpgd", "sk"):
            if (family, depth) not in steps:
                steps[family, depth] = polar_steps(problem, family, depth, s)
            values = steps[family, depth][method]
        else:
            values = grid_run(problem, family, method, depth, s)
        limits = theory(problem, family, depth, method, values, s)
        rows += rows_for(family, depth, method, values, s, limits)
        tag = f"{family}/L{depth}/{method}"
        for name, key in _CURVES.items():
            curves[f"{tag}/{name}"] = values[key]
        curves[f"{tag}/theory_error"] = limits["error"]
    bar.close()
    curves["scales"] = np.asarray(s["scales"])
    curves["ratios"] = np.asarray(s["ratios"])
    curves["truth"] = np.asarray(problem.truth)
    eps = float(jnp.finfo(problem.inputs.dtype).eps)
    fits = dict(
        findings=findings(rows, s),
        limit_gap=limit_gaps(rows),
        precision=dict(
            dtype=str(problem.inputs.dtype),
            eps=eps,
            raised={k: dict(asked=a, used=u) for k, (a, u) in raised.items()},
        ),
    )
    return WNRobustBiasResult(settings=settings, rows=rows, fits=fits, curves=curves)
