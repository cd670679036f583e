r"""wn-robust-bias's runs: the models, one training run, the (α, ρ) grid of runs,
and the theory each flow limit is checked against (docs: theory/implicit-bias)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, dynamics, models, sweeps
from .._checks import is_concrete
from .._precision import TOLERANCE_ULPS, attainable_tolerances
from ._settings import SettingError
from ._wn_robust_bias_log import LogCoordinateField, LogCoordinates
from ._wn_robust_bias_stall import (
    efolding_time,
    escape_time,
    settle_time,
    signed_log,
    stalled,
)
from ._wn_robust_bias_steps import DISCRETE_ONLY, local_descent, projection, run_of
from ._wn_robust_bias_support import support_grid

FAMILIES = ("plain", "polar", "polar-split")
METHODS = {"plain": ("gf", "gd"), "polar": ("gf", "rpgd", "sk")}
METHODS["polar-split"] = METHODS["polar"]
METHOD_NAMES = dict(gf="GF", gd="GD", rpgd="rPGD", sk="Salimans–Kingma GD")


def check_settings(s) -> tuple[list[int], tuple[str, ...]]:
    """The depths (ints) and families of the settings, checked."""
    if s["sparsity"] > s["d"]:
        raise SettingError(f"setting `sparsity` must be ≤ d = {s['d']}")
    if s["n"] >= s["d"]:
        raise SettingError("setting `n` must be < d (an underdetermined problem)")
    depths = []
    for depth in s["depths"]:
        if depth != int(depth) or depth < 2:
            raise SettingError(f"setting `depths`: integers ≥ 2, got {depth:g}")
        depths.append(int(depth))
    if s["steps_cap"] < s["steps"]:
        raise SettingError(
            f"setting `steps_cap` ({s['steps_cap']}) must be ≥ `steps` ({s['steps']})"
        )
    if s["ratio"] not in s["ratios"]:
        raise SettingError(f"setting `ratio` ({s['ratio']:g}) must be in `ratios`")
    families = tuple(f.strip() for f in s["families"].split(","))
    if not families or any(f not in FAMILIES for f in families):
        raise SettingError(
            f"setting `families`: a subset of {', '.join(FAMILIES)}, got "
            f"{s['families']!r}"
        )
    if "plain" not in families:
        raise SettingError("setting `families` must include plain (the baseline)")
    return depths, families


#: A tolerance within ~100 ulps is met or missed by round-off
#: (`flowgap._precision.TOLERANCE_ULPS`); the loss's residual Xβ − y is resolved
#: to a few ulps of |y| per component. So the job asks for no relative accuracy
#: finer than 100·ε (1.2e-5 in float32, 2.2e-14 in float64: defaults unchanged).
ULPS = TOLERANCE_ULPS


def attainable(settings, problem) -> tuple[dict, dict]:
    r"""The settings with the tolerances the problem's dtype can meet, and the
    ones raised (name → (asked, used); empty in float64 at the defaults).

    `rtol` → max(rtol, 100ε), `atol` raised by the same factor (their ratio
    sets which weights count as small); the loss threshold `tol` →
    max(tol, (100ε)²·L₀) with L₀ = ‖y‖²/2n the loss at β = 0: the loss is
    quadratic in a residual resolved to 100ε relative. Traceable in the
    problem (then `tol` is traced and not reported as raised).
    """
    eps = float(jnp.finfo(problem.inputs.dtype).eps)
    rtol, atol = attainable_tolerances(
        settings["rtol"], settings["atol"], problem.inputs.dtype
    )
    loss0 = jnp.sum(problem.targets**2) / (2 * problem.n)
    if is_concrete(loss0):
        tol = max(settings["tol"], (ULPS * eps) ** 2 * float(loss0))
    else:
        tol = jnp.maximum(settings["tol"], (ULPS * eps) ** 2 * loss0)
    used = dict(rtol=rtol, atol=atol, tol=tol)
    raised = {
        k: (settings[k], v)
        for k, v in used.items()
        if isinstance(v, float) and v != settings[k]
    }
    return {**settings, **used}, raised


def learning_rate(problem, depth: int, scale, step):
    r"""The plain net's local step (`_wn_robust_bias_steps`) in closed form at a
    balanced interpolating point u = v = m·1: `step` times the stability bound
    2/λ_max there (traceable in α). The runs re-estimate the step by Lanczos at
    their own iterates; this is the value it takes where the weights are m·1
    and the residual vanishes (the step the rule used before it was local).

    At u = v = m·1 the Gauss–Newton Hessian of the depth-L net is
    L²m^{2L−2}[X, −X]ᵀ[X, −X]/n, whose top eigenvalue is 2L²m^{2L−2}λ_max(XᵀX/n),
    so the step is step/(L²m^{2L−2}λ_max(XᵀX/n)).
    m = max(α, ‖β₂‖_∞^{1/L}) with β₂ = X⁺y the minimum-ℓ₂ interpolator (the
    weights' scale at the solution when α is small; no use of β*).

    Relation to `flowgap.dynamics.stable_learning_rate` (Lanczos on the full
    Hessian): the Gauss–Newton Hessian does not depend on y and is the full
    Hessian wherever the residual vanishes, so this equals
    `stable_learning_rate(loss₀, DiagonalNet(d, depth=L, scale=m), fraction=step)`
    with loss₀ the loss of targets Xβ(m·1) = 0 (tested).
    """
    x, y = problem.inputs, problem.targets
    gram = x @ x.T / problem.n
    top = jnp.linalg.eigvalsh(gram)[-1]
    ridge = x.T @ jnp.linalg.solve(x @ x.T, y)
    m = jnp.maximum(scale, jnp.max(jnp.abs(ridge)) ** (1 / depth))
    return step / (depth**2 * m ** (2 * depth - 2) * top)


def make_model(family: str, dim: int, depth: int, scale):
    if family == "plain":
        return models.DiagonalNet(dim, depth=depth, scale=scale)
    return models.PolarDiagonalNet(
        dim, depth=depth, scale=scale, split=family == "polar-split"
    )


def _radii(model, family: str):
    """Final radius and stored-direction norm per block, shape (2,) (repeated for
    the stacked net; NaN for the plain net)."""
    if family == "plain":
        nan = jnp.full((2,), jnp.nan, model.u.dtype)
        return nan, nan
    norm = jnp.linalg.norm(model.direction, axis=-1)
    return jnp.broadcast_to(model.radius, (2,)), jnp.broadcast_to(norm, (2,))


def _outputs(run, final, problem, model0, scale, ratio, family):
    """The scalars and vectors one run reports (see `train`); `run` holds the
    run's `final_loss`, `time`, `steps`, `status` (a `RESULTS` code),
    `successful` and `converged`; `final` is the model at the stop."""
    radius, direction_norm = _radii(final, family)
    r0, _ = _radii(model0, family)
    beta = final.end_to_end()
    return dict(
        run,
        beta=beta,
        recovery_error=jnp.linalg.norm(beta - problem.truth),
        radius=radius,
        direction_norm=direction_norm,
        alpha_eff=analysis.effective_scale(scale, r0, radius, ratio),
    )


def _flow_run(traj) -> dict:
    nan = jnp.full((), jnp.nan, traj.final_loss.dtype)
    return dict(
        final_loss=traj.final_loss,
        time=traj.stop_time,
        steps=traj.stats["num_steps"],
        status=dynamics.status_code(traj.result),
        successful=traj.successful,
        converged=traj.result == dynamics.RESULTS.event_occurred,
        **{k: nan for k in DISCRETE_ONLY},
    )


def _flow_options(rates, s) -> dict:
    """`gradient_flow`'s options for the log-coordinate flow (`rates`: the
    model's rate pytree, or None)."""
    return dict(
        t1=s["t1"],
        field=LogCoordinateField(None if rates is None else LogCoordinates(rates)),
        solver=diffrax.Tsit5(),
        rtol=s["rtol"],
        atol=s["atol"],
        max_steps=s["max_steps"],
        stop_when=dynamics.LossBelow(s["tol"]),
    )


#: The chord iteration of Kvaerno5's stages stops once its estimated remaining
#: error is below NEWTON_KAPPA times the step controller's tolerance. Diffrax's
#: default, 1e-2, asks the iteration for 1e-12 relative at rtol 1e-10, and on the
#: polar flows' tails it misses that within its 10 iterations so often that the
#: steps shrink to nothing: measured on the split depth-3 net, α = 0.01, ρ = 10,
#: 20,000 steps (4,949 rejected) to L = 2.8e-5, against L < 1e-10 in 9,260 steps
#: at 1. The accuracy is the controller's either way: through the escape of the
#: split depth-3 net at α = 1e-3, ρ = 1 (to t = 16,000, no stop) β agrees with
#: Tsit5's to 8.3e-10 relative at κ = 1 and at κ = 0.1 alike, which took 18,351
#: steps to κ = 1's 9,396 (the global error of rtol 1e-10, not the Newton
#: tolerance, sets the gap).
NEWTON_KAPPA = 1.0


def _implicit() -> diffrax.Kvaerno5:
    """Kvaerno5 (L-stable, order 5), its Newton–chord iteration at the step
    controller's rtol/atol and norm, stopped at `NEWTON_KAPPA` of them."""
    chord = diffrax.with_stepsize_controller_tols(diffrax.VeryChord)
    return diffrax.Kvaerno5(root_finder=chord(kappa=NEWTON_KAPPA))


def train(
    problem,
    scale,
    ratio,
    *,
    family,
    method,
    depth,
    settings,
    solver="tsit5",
    projected=None,
):
    r"""One run: `family` ("plain", "polar", "polar-split") of `depth` from
    u = v = α·1, trained by `method` to L < `tol`.

    - "gf": the gradient flow with `rates=model.rates(ρ)`, solved by Tsit5 in
      log coordinates (`LogCoordinates`, `LogCoordinateField`: the same ODE,
      without the stiffness of the decaying off-support weights) to L < `tol`
      within `max_steps` steps and flow time `t1` (`solver="kvaerno5"`: by
      Kvaerno5 within `implicit_steps`, as `grid_run` does where Tsit5 fails);
    - "gd": plain GD; "rpgd": GD then renormalised direction; "sk": plain GD on
      (r, θ) (Salimans–Kingma), all with rates P (1 on r, ρ on θ) at the local
      step η = `step`·2/λ_max(P^½∇²L P^½), re-estimated every `segment` steps,
      within `steps` accepted steps (`_wn_robust_bias_steps.local_descent`).

    `scale` α and `ratio` ρ may be traced (ρ is unused by the plain net).
    `projected` (a traced bool, for a polar net) selects rPGD where true and SK
    where false in one program, whatever `method` ("rpgd" or "sk") says.

    **Returns:** a dict: `beta` β_∞, `recovery_error` ‖β_∞ − β*‖, `final_loss`,
    `time` (flow time, or k·η, at the stop), `steps` (solver / GD steps),
    `status` (`flowgap.RESULTS` code), `successful` (the run ended normally),
    `converged` (it stopped at L < `tol`: `RESULTS.event_occurred`),
    `efolding_time`, `settle_time` and `escape_time` (at the stop:
    `_wn_robust_bias_stall`),
    `implicit` (the run is Kvaerno5's), `radius` and `direction_norm` (per
    block; NaN for the plain net), `alpha_eff` (docs: theory/implicit-bias,
    from the final radius) and, for the discrete runs (NaN for a flow), `lr_min`,
    `lr_max` (the smallest and largest step taken), `undone` (segments undone
    by the safeguard), `rate` (final per-step loss contraction q) and
    `steps_needed` (the steps to L < `tol` at that rate).
    """
    if solver not in ("tsit5", "kvaerno5"):
        raise ValueError(f"`solver` must be 'tsit5' or 'kvaerno5', got {solver!r}.")
    s = settings
    model = make_model(family, s["d"], depth, scale)
    rates = None if family == "plain" else model.rates(ratio)
    if method == "gf":
        options = _flow_options(rates, s)
        if solver == "kvaerno5":
            options.update(solver=_implicit(), max_steps=s["implicit_steps"])
        traj = dynamics.gradient_flow(problem.loss, LogCoordinates.of(model), **options)
        final, run = traj.final.model(), _flow_run(traj)
        # The state's logs, not log(final): a weight below float64's range
        # keeps its exact size.
        log_size = traj.final.log_model
        sign = jax.tree.map(jnp.ones_like, log_size)
    else:
        final, report = local_descent(
            problem.loss,
            model,
            rates=rates,
            projection=projection(method, projected),
            s=s,
        )
        run = run_of(report)
        log_size, sign = signed_log(final)
    out = _outputs(run, final, problem, model, scale, ratio, family)
    out["implicit"] = jnp.asarray(method == "gf" and solver == "kvaerno5")
    rates = jax.tree.map(jnp.ones_like, final) if rates is None else rates
    out["efolding_time"] = efolding_time(problem.loss, final, rates)
    out["settle_time"] = settle_time(out["efolding_time"], run["final_loss"], s["tol"])
    out["escape_time"] = escape_time(problem.loss, log_size, sign, rates, depth)
    return out


def polar_steps(problem, family, depth, s) -> dict:
    """rPGD and SK over the (α, ρ) grid in one program (one compilation: the
    projection is chosen by a traced flag), as `grid_run` returns each:
    method → arrays of shape (scales, ratios)."""
    grid = np.meshgrid(s["scales"], s["ratios"], [True, False], indexing="ij")
    scale, ratio, projected = (a.ravel() for a in grid)
    values = _points(
        problem,
        scale,
        ratio,
        projected=projected,
        family=family,
        method="rpgd",
        depth=depth,
        settings=s,
    )
    shape = (len(s["scales"]), len(s["ratios"]), 2)
    values = {k: v.reshape(shape + v.shape[1:]) for k, v in values.items()}
    return {
        m: {k: v[:, :, i] for k, v in values.items()}
        for i, m in enumerate(("rpgd", "sk"))
    }


def grid_run(problem, family, method, depth, s) -> dict:
    """`train` over the (α, ρ) grid (α only for the plain net), as NumPy arrays
    of shape (scales, ratios) (one ratio column for the plain net).

    One program (`flowgap.sweep`) of runs; for a flow, then, only if some Tsit5
    run failed (`max_steps`: a slow tail whose curvature is far below the
    fitted modes', or an escape from a plateau), one program of Kvaerno5 runs
    over those points, kept where they reach a lower loss. Kvaerno5 is
    compiled only where it is needed. A run stalled for good (its settle
    and escape times both beyond `t1`: `_wn_robust_bias_stall`) is not
    re-solved: no solver gets it further within the horizon."""
    ratios = s["ratios"] if family != "plain" else (1.0,)
    scale, ratio = (a.ravel() for a in np.meshgrid(s["scales"], ratios, indexing="ij"))
    options = dict(family=family, method=method, depth=depth, settings=s)
    values = _points(problem, scale, ratio, **options)
    failed = ~values["successful"] & ~stalled(
        values["settle_time"], values["escape_time"], s["t1"]
    )
    if method == "gf" and failed.any():
        again = _points(
            problem, scale[failed], ratio[failed], solver="kvaerno5", **options
        )
        # Kvaerno5's run is kept where it got further (lower L): where neither
        # finished, the row then reports the furthest state and its status.
        index = np.flatnonzero(failed)
        index = index[again["final_loss"] < values["final_loss"][index]]
        keep = again["final_loss"] < values["final_loss"][failed]
        for key, value in values.items():
            value[index] = again[key][keep]
    shape = (len(s["scales"]), len(ratios))
    return {k: v.reshape(shape + v.shape[1:]) for k, v in values.items()}


def _points(problem, scales, ratios, projected=None, **options) -> dict:
    """`train` at the points (scales[i], ratios[i]) (and `projected[i]`), as
    one program."""
    grid = jnp.asarray(scales), jnp.asarray(ratios)
    flags = None if projected is None else jnp.asarray(projected)

    def fn(point):
        flag = None if flags is None else flags[point]
        return train(problem, grid[0][point], grid[1][point], projected=flag, **options)

    values = sweeps.sweep(fn, dict(point=np.arange(len(scales))), progress=False)
    values = {k: np.array(v) for k, v in values.values.items()}
    return values | support_grid(problem, values)


def _plain_from(problem, depth, scale, s):
    """Gradient-flow limit β of the plain net from u = v = α·1, explicit solver
    only (NaN unless it converged)."""
    model = models.DiagonalNet(s["d"], depth=depth, scale=scale)
    start = LogCoordinates.of(model)
    traj = dynamics.gradient_flow(problem.loss, start, **_flow_options(None, s))
    converged = traj.result == dynamics.RESULTS.event_occurred
    return jnp.where(converged, traj.final.end_to_end(), jnp.nan)


def _effective_prediction(problem, depth, values, s):
    """Plain flow limit from the measured α_eff of the stacked polar net, over the
    grid (for depth ≥ 3, which has no closed form, and where the depth-2 dual
    solve fails)."""
    alpha = values["alpha_eff"][..., 0]
    # α_eff can be absurdly small (exp(−ρr²/2)). From there the plain depth-L flow
    # plateaus for ~1/α^{L−2} (depth ≥ 3) and does not finish, and at depth 2 the
    # weights sit below the solver's atol: no prediction there.
    usable = np.isfinite(alpha) & (alpha > (1e-8 if depth == 2 else 1e-6))
    safe = np.where(usable, alpha, 1.0).ravel()
    beta = jax.jit(jax.vmap(lambda a: _plain_from(problem, depth, a, s)))(
        jnp.asarray(safe)
    )
    beta = np.asarray(beta).reshape(alpha.shape + (-1,))
    return np.where(usable[..., None], beta, np.nan)


# One compiled dual solve (α traced) serves every call of a run; a failed solve
# is NaN, not an error (raised inside a compiled solve, it would print a
# traceback even where caught).
_dual_limit = jax.jit(functools.partial(analysis.woodworth_limit, throw=False))


def _woodworth(problem, scales):
    """Woodworth's Q_α minimiser at each α (NaN where the dual solve fails, or
    where 2α² is below the dtype's normal range), at `woodworth_limit`'s
    tolerances (1e-13, raised to 100ε where the dtype cannot meet it)."""
    finfo = jnp.finfo(problem.inputs.dtype)
    out = []
    for a in np.ravel(scales):
        if np.isfinite(a) and a > np.sqrt(float(finfo.tiny)):
            scale = jnp.asarray(a, problem.inputs.dtype)
            beta = _dual_limit(problem.inputs, problem.targets, scale)
            out.append(np.asarray(beta))
        else:
            out.append(np.full(problem.truth.shape, np.nan))
    return np.asarray(out).reshape(np.shape(scales) + problem.truth.shape)


def _relative(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def theory(problem, family, depth, method, values, s) -> dict:
    """The theory's β for each grid point, its recovery error, and the relative
    gap ‖β_run − β_theory‖/‖β_theory‖ (NaN where there is none)."""
    shape = values["recovery_error"].shape
    nan = np.full(shape, np.nan)
    if method != "gf":
        return dict(error=nan, gap=nan)
    truth = np.asarray(problem.truth)
    beta = np.asarray(values["beta"])
    if family == "plain":
        if depth != 2:
            return dict(error=nan, gap=nan)
        limit = _woodworth(problem, np.asarray(s["scales"]))[:, None]
    elif family == "polar-split":
        # No α_eff law here: the u and v mirrors integrate the residual weighted
        # by r_u² and r_v², which differ, so the limit is no plain-net limit.
        return dict(error=nan, gap=nan)
    else:
        limit = np.full(values["beta"].shape, np.nan)
        if depth == 2:
            limit = _woodworth(problem, np.asarray(values["alpha_eff"][..., 0]))
        if np.any(np.isnan(limit)):  # depth ≥ 3, or where the dual solve failed
            flow = _effective_prediction(problem, depth, values, s)
            limit = np.where(np.isnan(limit), flow, limit)
    ok = np.asarray(values["converged"])
    error = np.where(ok, np.linalg.norm(limit - truth, axis=-1), np.nan)
    return dict(error=error, gap=np.where(ok, _relative(beta, limit), np.nan))
