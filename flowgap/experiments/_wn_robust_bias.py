r"""wn-robust-bias: is the polar diagonal net's sparse bias robust to the init scale?

Sparse recovery (Gaussian X ∈ ℝ^{n×d}, n < d, s-sparse β*, y = Xβ*) is fitted by
the plain `DiagonalNet` and by the `PolarDiagonalNet` with the normalisation on the
stacked w = (u; v) ("polar") or on u and v separately ("polar-split"), at depths 2
and 3, from u = v = α·1, for init scales α over several decades and rate ratios
ρ = η_θ/η_r. Each is trained to L < `tol` by the exact gradient flow (Diffrax;
explicit Tsit5, with an implicit Kvaerno5 fallback where the explicit solve fails)
and by gradient descent (plain GD; for the polar nets the projected "rPGD" and the
Salimans–Kingma variant). It reports the recovery error ‖β_∞ − β*‖, the time / steps
to converge, and the theory (docs: theory/implicit-bias): the Woodworth Q_α minimiser
for the
plain depth-2 net, and for the polar flow the plain limit from the effective scale
α_eff = α(r_∞/r₀)exp(−(ρ/2)(r_∞² − r₀²)) computed from the measured final radius.

Every (family, depth, method) is one compiled program vmapped over the (α, ρ)
grid (`flowgap.sweep`): scales and ratios are traced.
"""

import dataclasses
import math

import diffrax
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems, sweeps
from ._settings import Setting, SettingError
from ._sweepable import Sweepable

NAME = "wn-robust-bias"

FAMILIES = ("plain", "polar", "polar-split")
METHODS = {"plain": ("gf", "gd"), "polar": ("gf", "rpgd", "sk")}
METHODS["polar-split"] = METHODS["polar"]
METHOD_NAMES = dict(gf="GF", gd="GD", rpgd="rPGD", sk="Salimans–Kingma GD")

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
        "GD step, as a fraction of the plain net's stability bound",
        positive=True,
    ),
    Setting("steps", 20000, "GD step budget", "int", minimum=1),
    Setting("t1", 1e5, "gradient-flow horizon (it stops at L < tol)", positive=True),
    Setting("rtol", 1e-10, "gradient-flow relative tolerance", positive=True),
    Setting("atol", 1e-12, "gradient-flow absolute tolerance", positive=True),
    Setting("max_steps", 100000, "Tsit5 step budget per run", "int", minimum=1),
    Setting(
        "implicit_steps",
        2000,
        "Kvaerno5 step budget of the fallback (each step costs Jacobian solves)",
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
    depths=(2.0,),
    scales=(1e-2, 1e-1, 1.0),
    ratios=(1.0, 10.0),
    families="plain,polar",
    steps=3000,
    # Small enough that the stiff point (α = 0.01, ρ = 10) needs the fallback.
    max_steps=20000,
    implicit_steps=3000,
)


def learning_rate(problem, depth: int, scale, step):
    r"""The GD step used at init scale α: `step` times the plain net's stability
    bound 2/λ_max(∇²L) at the scale it trains at.

    At u = v = m·1 the Gauss–Newton Hessian of the depth-L net is
    L²m^{2L−2}[X, −X]ᵀ[X, −X]/n, whose top eigenvalue is 2L²m^{2L−2}λ_max(XᵀX/n).
    m = max(α, ‖β₂‖_∞^{1/L}) with β₂ = X⁺y the minimum-ℓ₂ interpolator (the
    weights' scale at the solution when α is small; no use of β*). The polar
    variants take the same η on the radius and ρη on the direction: the step one
    would use for the plain net.
    """
    x, y = problem.inputs, problem.targets
    gram = x @ x.T / problem.n
    top = jnp.linalg.eigvalsh(gram)[-1]
    ridge = x.T @ jnp.linalg.solve(x @ x.T, y)
    m = jnp.maximum(scale, jnp.max(jnp.abs(ridge)) ** (1 / depth))
    return step / (depth**2 * m ** (2 * depth - 2) * top)


def _model(family: str, dim: int, depth: int, scale):
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


def _outputs(traj, problem, model0, scale, ratio, implicit, family):
    """The scalars and vectors one run reports (see `train`)."""
    final = traj.final
    radius, direction_norm = _radii(final, family)
    r0, _ = _radii(model0, family)
    beta = final.end_to_end()
    return dict(
        beta=beta,
        recovery_error=jnp.linalg.norm(beta - problem.truth),
        final_loss=traj.final_loss,
        time=traj.stop_time,
        steps=traj.stats["num_steps"],
        status=dynamics.status_code(traj.result),
        successful=traj.successful,
        converged=traj.result == dynamics.RESULTS.event_occurred,
        implicit=jnp.asarray(implicit),
        radius=radius,
        direction_norm=direction_norm,
        alpha_eff=analysis.effective_scale(scale, r0, radius, ratio),
    )


def _flow(problem, model, rates, s, implicit=False):
    solver = diffrax.Kvaerno5() if implicit else diffrax.Tsit5()
    return dynamics.gradient_flow(
        problem.loss,
        model,
        t1=s["t1"],
        solver=solver,
        rtol=s["rtol"],
        atol=s["atol"],
        max_steps=s["implicit_steps" if implicit else "max_steps"],
        rates=rates,
        stop_when=dynamics.LossBelow(s["tol"]),
    )


def train(problem, scale, ratio, *, family, method, depth, settings, implicit=False):
    r"""One run: `family` ("plain", "polar", "polar-split") of `depth` from
    u = v = α·1, trained by `method` to L < `tol`.

    - "gf": `gradient_flow` with `rates=model.rates(ρ)` (Tsit5, or Kvaerno5 when
      `implicit`);
    - "gd": plain GD; "rpgd": GD then renormalised direction; "sk": plain GD on
      (r, θ) (Salimans–Kingma), all at η = `learning_rate(...)` (direction ρη).

    `scale` α and `ratio` ρ may be traced (ρ is unused by the plain net).

    **Returns:** a dict: `beta` β_∞, `recovery_error` ‖β_∞ − β*‖, `final_loss`,
    `time` (flow time, or k·η, at the stop), `steps` (solver / GD steps),
    `status` (`flowgap.RESULTS` code), `successful` (the run ended normally),
    `converged` (it stopped at L < `tol`: `RESULTS.event_occurred`), `implicit`,
    `radius` and `direction_norm` (per block; NaN for the plain net) and
    `alpha_eff` (docs: theory/implicit-bias, from the final radius).
    """
    s = settings
    model = _model(family, s["d"], depth, scale)
    rates = None if family == "plain" else model.rates(ratio)
    if method == "gf":
        traj = _flow(problem, model, rates, s, implicit)
    else:
        traj = dynamics.gradient_descent(
            problem.loss,
            model,
            lr=learning_rate(problem, depth, scale, s["step"]),
            steps=s["steps"],
            save_every=s["steps"],
            rates=rates,
            projection=models.PolarDiagonalNet.normalised if method == "rpgd" else None,
            stop_when=dynamics.LossBelow(s["tol"]),
        )
    return _outputs(traj, problem, model, scale, ratio, implicit, family)


def _failed(out):
    return ~out["successful"]


def train_with_fallback(problem, scale, ratio, **kwargs):
    """`train`, and for the flow, a Kvaerno5 re-solve where the explicit one failed
    (stiff: max_steps reached). Traceable: under `vmap` the implicit solve runs
    only if some run of the batch needs it (`lax.cond` on `unvmap_any`)."""
    out = train(problem, scale, ratio, **kwargs)
    if kwargs["method"] != "gf":
        return out
    failed = _failed(out)

    def redo():
        again = train(problem, scale, ratio, implicit=True, **kwargs)
        return jax.tree.map(lambda a, b: jnp.where(failed, a, b), again, out)

    return lax.cond(eqxi.unvmap_any(failed), redo, lambda: out)


def point(settings, *, key, scale, ratio):
    """One `flowgap sweep` point: `model`/`method`/`depth` of the settings on the
    problem drawn by `key`, at α = `scale`, ρ = `ratio`.

    **Returns:** `recovery_error`, `final_loss`, `time`, `steps`, `alpha_eff`,
    `implicit` (1 where the flow needed Kvaerno5), `converged` (1 where L < tol)
    and `status` (0 when the run ended normally, else its `RESULTS` code).
    """
    s = settings
    _check_method(s["model"], s["method"])
    problem = _problem(key, s)
    out = train_with_fallback(
        problem,
        scale,
        ratio,
        family=s["model"],
        method=s["method"],
        depth=s["depth"],
        settings=s,
    )
    converged = out["converged"]
    return dict(
        recovery_error=out["recovery_error"],
        final_loss=out["final_loss"],
        time=out["time"],
        steps=out["steps"],
        alpha_eff=out["alpha_eff"][0],
        implicit=out["implicit"].astype(jnp.int32),
        converged=converged.astype(jnp.int32),
        status=jnp.where(_failed(out), out["status"], 0),
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


def _grid_run(problem, family, method, depth, s):
    """One program over the (α, ρ) grid (α only for the plain net), explicit
    solver; then `_implicit_redo` for the flows that failed."""
    grid = dict(scale=np.asarray(s["scales"]))
    if family != "plain":
        grid["ratio"] = np.asarray(s["ratios"])
    options = dict(family=family, method=method, depth=depth, settings=s)

    def fn(scale, ratio=1.0):
        return train(problem, scale, ratio, **options)

    values = sweeps.sweep(fn, grid, progress=False).values
    values = {k: np.array(v) for k, v in values.items()}
    if family == "plain":  # a ratio axis of length 1, like the polar nets'
        values = {k: v[:, None] for k, v in values.items()}
    if method == "gf":
        _implicit_redo(problem, values, options, s)
    return values


def _implicit_redo(problem, values, options, s):
    """Re-solve with Kvaerno5 the grid points whose explicit flow failed (in
    place), as one program vmapped over just those points."""
    failed = np.argwhere(np.asarray(_failed(values)))
    if failed.size == 0:
        return
    ratios = s["ratios"] if options["family"] != "plain" else (1.0,)
    scale = jnp.asarray([s["scales"][i] for i, _ in failed])
    ratio = jnp.asarray([ratios[j] for _, j in failed])
    out = jax.jit(
        jax.vmap(lambda a, r: train(problem, a, r, implicit=True, **options))
    )(scale, ratio)
    for k, v in out.items():
        values[k][failed[:, 0], failed[:, 1]] = np.asarray(v)


def _plain_from(problem, depth, scale, s):
    """Gradient-flow limit β of the plain net from u = v = α·1 (NaN unless it
    converged)."""
    model = models.DiagonalNet(s["d"], depth=depth, scale=scale)
    traj = _flow(problem, model, None, s)
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


def _woodworth(problem, scales):
    """Woodworth's Q_α minimiser at each α (NaN where the dual solve fails, e.g.
    α so small that 2α² underflows the dual's scale)."""
    solve = jax.jit(
        lambda a: analysis.woodworth_limit(problem.inputs, problem.targets, a)
    )
    out = []
    for a in np.ravel(scales):
        try:
            if not (np.isfinite(a) and 1e-30 < a):
                raise ValueError("scale out of the dual solver's range")
            out.append(np.asarray(solve(jnp.asarray(a))))
        except Exception:  # noqa: BLE001 — a failed dual solve is reported as NaN
            out.append(np.full(problem.truth.shape, np.nan))
    return np.asarray(out).reshape(np.shape(scales) + problem.truth.shape)


def _relative(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def _status_name(code: int) -> str:
    name = dynamics.status_name(code)
    if name == "event_occurred":
        return "converged"
    if name == "successful":
        return "budget"  # ran out of steps / time before L < tol
    return {"max_steps_reached": "max_steps"}.get(name, name)


@dataclasses.dataclass
class WNRobustBiasResult:
    """What one wn-robust-bias run produced.

    `rows`: one dict per run (family, depth, method, α, ρ, recovery error, loss,
    time, steps, status, solver, r₀, r_∞, ‖θ‖, α_eff and the theory's error);
    `fits`: the headline comparisons, computed from the rows (see `findings`);
    `curves`: the grids as arrays (axes scales × ratios).
    """

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        s = self.settings
        scales = s["scales"]
        head = f"{'model':<12}{'L':>2} {'method':<19}{'ρ':>6} " + "".join(
            f"{f'α={a:g}':>10}" for a in scales
        )
        lines = ["recovery error ‖β_∞ − β*‖ (* = Kvaerno5, ! = not converged)"]
        lines += [head, "-" * len(head)]
        for key, rows in _group(self.rows).items():
            family, depth, method, ratio = key
            cells = []
            for r in rows:
                mark = "*" if r["solver"] == "Kvaerno5" else ""
                mark += "" if r["status"] == "converged" else "!"
                cells.append(f"{r['recovery_error']:>9.2e}{mark:<1}")
            rho = "" if ratio is None else f"{ratio:g}"
            lines.append(
                f"{family:<12}{depth:>2} {METHOD_NAMES[method]:<19}{rho:>6} "
                + "".join(f"{c:>10}" for c in cells)
            )
        lines.append("")
        lines += [f"{k}: {v}" for k, v in self.fits["findings"].items()]
        return "\n".join(lines)

    def figure(self):
        return _figure(self)


def _group(rows):
    groups = {}
    for r in rows:
        key = (r["model"], r["depth"], r["method"], r["ratio"])
        groups.setdefault(key, []).append(r)
    return groups


def _rows_for(family, depth, method, values, s, theory):
    rows = []
    ratios = s["ratios"] if family != "plain" else (None,)
    for i, scale in enumerate(s["scales"]):
        for j, ratio in enumerate(ratios):
            status = int(values["status"][i, j])
            radius = values["radius"][i, j]
            rows.append(
                dict(
                    model=family,
                    depth=depth,
                    method=method,
                    scale=float(scale),
                    ratio=ratio,
                    recovery_error=float(values["recovery_error"][i, j]),
                    final_loss=float(values["final_loss"][i, j]),
                    time=float(values["time"][i, j]),
                    steps=int(values["steps"][i, j]),
                    status=_status_name(status),
                    solver=(
                        ("Kvaerno5" if values["implicit"][i, j] else "Tsit5")
                        if method == "gf"
                        else "-"
                    ),
                    r_inf=_floats(radius, family),
                    direction_norm=_floats(values["direction_norm"][i, j], family),
                    alpha_eff=_floats(values["alpha_eff"][i, j], family),
                    theory_error=_float(theory["error"][i, j]),
                    limit_gap=_float(theory["gap"][i, j]),
                )
            )
    return rows


def _float(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(pair, family):
    """One number for the stacked net, [u, v] for split, None for plain."""
    if family == "plain":
        return None
    if family == "polar":
        return _float(pair[0])
    return [_float(p) for p in pair]


def _theory(problem, family, depth, method, values, s):
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
        theory = _woodworth(problem, np.asarray(s["scales"]))[:, None]
    elif family == "polar-split":
        # No α_eff law here: the u and v mirrors integrate the residual weighted
        # by r_u² and r_v², which differ, so the limit is no plain-net limit.
        return dict(error=nan, gap=nan)
    else:
        theory = np.full(values["beta"].shape, np.nan)
        if depth == 2:
            theory = _woodworth(problem, np.asarray(values["alpha_eff"][..., 0]))
        if np.any(np.isnan(theory)):  # depth ≥ 3, or where the dual solve failed
            flow = _effective_prediction(problem, depth, values, s)
            theory = np.where(np.isnan(theory), flow, theory)
    ok = np.asarray(values["converged"])
    error = np.where(ok, np.linalg.norm(theory - truth, axis=-1), np.nan)
    return dict(error=error, gap=np.where(ok, _relative(beta, theory), np.nan))


def _check(s):
    if s["sparsity"] > s["d"]:
        raise SettingError(f"setting `sparsity` must be ≤ d = {s['d']}")
    if s["n"] >= s["d"]:
        raise SettingError("setting `n` must be < d (an underdetermined problem)")
    depths = []
    for depth in s["depths"]:
        if depth != int(depth) or depth < 2:
            raise SettingError(f"setting `depths`: integers ≥ 2, got {depth:g}")
        depths.append(int(depth))
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


def run(settings: dict, *, seed: int, progress: bool = True) -> WNRobustBiasResult:
    """Run wn-robust-bias with resolved `settings` (see `SETTINGS`)."""
    s = dict(settings)
    depths, families = _check(s)
    problem = _problem(jax.random.key(seed), s)
    jobs = [(f, L, m) for L in depths for f in families for m in METHODS[f]]
    rows, curves = [], {}
    bar = tqdm(jobs, desc=NAME, disable=not progress, leave=False)
    for family, depth, method in bar:
        bar.set_postfix_str(f"{family} L={depth} {method}")
        values = {
            k: np.asarray(v)
            for k, v in _grid_run(problem, family, method, depth, s).items()
        }
        theory = _theory(problem, family, depth, method, values, s)
        rows += _rows_for(family, depth, method, values, s, theory)
        tag = f"{family}/L{depth}/{method}"
        for name in (
            "recovery_error",
            "time",
            "steps",
            "status",
            "converged",
            "implicit",
        ):
            curves[f"{tag}/{name}"] = values[name]
        curves[f"{tag}/alpha_eff"] = values["alpha_eff"]
        curves[f"{tag}/r_inf"] = values["radius"]
        curves[f"{tag}/theory_error"] = theory["error"]
    bar.close()
    curves["scales"] = np.asarray(s["scales"])
    curves["ratios"] = np.asarray(s["ratios"])
    curves["truth"] = np.asarray(problem.truth)
    fits = dict(findings=findings(rows, s), limit_gap=_limit_gaps(rows))
    return WNRobustBiasResult(settings=s, rows=rows, fits=fits, curves=curves)


def _limit_gaps(rows):
    """Largest relative gap polar-flow limit vs theory, per model and depth."""
    out = {}
    for r in rows:
        if r["method"] == "gf" and r["limit_gap"] is not None and r["model"] != "plain":
            key = f"{r['model']}/L{r['depth']}"
            out[key] = max(out.get(key, 0.0), r["limit_gap"])
    return out


def lookup(rows, **where):
    """The rows matching every `key=value` of `where`."""
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def findings(rows, settings) -> dict:
    """The headline comparisons, from the rows: per α (depth 2), the plain flow's
    error, the stacked polar flow's best error over ρ and at ρ = `ratio`, and the
    best discrete polar variant's error, each as a ratio to the plain error."""
    out = {}
    for scale in settings["scales"]:
        plain = lookup(rows, model="plain", depth=2, method="gf", scale=scale)
        if not plain:
            continue
        base = plain[0]["recovery_error"]
        polar = lookup(rows, model="polar", depth=2, method="gf", scale=scale)
        discrete = [
            r
            for r in rows
            if r["depth"] == 2
            and r["model"] != "plain"
            and r["method"] in ("rpgd", "sk")
            and r["scale"] == scale
            and r["status"] == "converged"
        ]
        parts = [f"plain GF {base:.2e}"]
        if polar:
            best = min(polar, key=lambda r: r["recovery_error"])
            parts.append(
                f"polar GF best {best['recovery_error']:.2e} (ρ={best['ratio']:g}, "
                f"×{best['recovery_error'] / base:.2g})"
            )
        if discrete:
            best = min(discrete, key=lambda r: r["recovery_error"])
            parts.append(
                f"best discrete polar {best['recovery_error']:.2e} ({best['model']} "
                f"{best['method']}, ρ={best['ratio']:g}, "
                f"×{best['recovery_error'] / base:.2g})"
            )
        out[f"L=2 α={scale:g}"] = "; ".join(parts)
    return out


def _figure(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, c = result.settings, result.curves
    scales, ratios = c["scales"], c["ratios"]
    j = list(ratios).index(s["ratio"])
    depths, families = _check(s)
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    colours = {"plain": "tab:blue", "polar": "tab:orange", "polar-split": "tab:green"}
    styles = {2: "-", 3: "--"}
    markers = dict(gf="o", gd="s", rpgd="^", sk="v")

    def col(family, method):
        return 0 if family == "plain" else j

    ax = axes[0, 0]
    for family in families:
        for depth in depths:
            tag = f"{family}/L{depth}/gf"
            _errors(
                ax,
                c,
                tag,
                col(family, "gf"),
                styles[depth],
                marker="o",
                color=colours[family],
                label=f"{family} L={depth} GF"
                + ("" if family == "plain" else f" ρ={s['ratio']:g}"),
            )
            theory = c[f"{tag}/theory_error"][:, col(family, "gf")]
            if np.any(np.isfinite(theory)):
                ax.loglog(
                    scales,
                    theory,
                    "x" if family != "plain" else ":",
                    color="k" if family == "plain" else colours[family],
                    ms=10,
                    label=(
                        f"Woodworth Q_α limit (L={depth})"
                        if family == "plain"
                        else f"plain limit from α_eff ({family} L={depth})"
                    ),
                )
    ax.set(
        xlabel="init scale α",
        ylabel="‖β_∞ − β*‖",
        title="gradient flow: recovery error (hollow: not converged)",
    )
    _legend_on_top(ax)

    ax = axes[0, 1]
    for family in families:
        for method in METHODS[family]:
            if method == "gf":
                continue
            for depth in depths:
                tag = f"{family}/L{depth}/{method}"
                _errors(
                    ax,
                    c,
                    tag,
                    col(family, method),
                    styles[depth],
                    marker=markers[method],
                    color=colours[family],
                    label=f"{family} L={depth} {METHOD_NAMES[method]}",
                )
    ax.set(
        xlabel="init scale α",
        ylabel="‖β_∞ − β*‖",
        title=f"discrete, step {s['step']:g}× plain bound, ρ={s['ratio']:g} "
        "(hollow: not converged)",
    )
    _legend_on_top(ax)

    ax = axes[0, 2]
    for family in families:
        for depth in depths:
            tag = f"{family}/L{depth}/gf"
            t = np.where(c[f"{tag}/converged"], c[f"{tag}/time"], np.nan)[
                :, col(family, "gf")
            ]
            ax.loglog(
                scales,
                t,
                styles[depth],
                marker="o",
                color=colours[family],
                label=f"{family} L={depth}",
            )
    ax.set(
        xlabel="init scale α",
        ylabel=f"flow time to L < {s['tol']:g}",
        title="gradient flow: time to converge",
    )
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    for family in families:
        for method in METHODS[family]:
            if method == "gf":
                continue
            for depth in depths:
                tag = f"{family}/L{depth}/{method}"
                k = np.where(c[f"{tag}/converged"], c[f"{tag}/steps"], np.nan)[
                    :, col(family, method)
                ]
                ax.loglog(
                    scales,
                    k,
                    styles[depth],
                    marker=markers[method],
                    color=colours[family],
                    label=f"{family} L={depth} {METHOD_NAMES[method]}",
                )
    ax.set(
        xlabel="init scale α",
        ylabel=f"GD steps to L < {s['tol']:g}",
        title=f"discrete: steps to converge (budget {s['steps']})",
    )
    _legend_on_top(ax)

    for ax, method in zip(axes[1, 1:], ("gf", "rpgd")):
        _heat_map(ax, result, method, depths[0])
    fig.suptitle(
        f"wn-robust-bias: sparse recovery n={s['n']}, d={s['d']}, s={s['sparsity']}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def _legend_on_top(ax):
    """Legend in two columns above the data (the log y-range is widened by 10⁴
    upwards), so it never hides a point."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 1e4)
    ax.legend(fontsize=6, ncol=2, loc="upper center")


def _errors(ax, c, tag, column, style, **kwargs):
    """Recovery error against α: converged runs joined by a line, the others as
    hollow markers."""
    scales = c["scales"]
    error = c[f"{tag}/recovery_error"][:, column]
    ok = c[f"{tag}/converged"][:, column]
    (line,) = ax.loglog(scales, np.where(ok, error, np.nan), style, **kwargs)
    ax.loglog(
        scales[~ok],
        error[~ok],
        linestyle="none",
        marker=kwargs.get("marker"),
        markerfacecolor="none",
        color=line.get_color(),
    )


def _heat_map(ax, result, method, depth):
    """log10 of polar / plain recovery error over α × ρ (stacked polar net), with
    K where the flow used Kvaerno5 and ! where it did not converge."""
    c = result.curves
    tag = f"polar/L{depth}/{method}"
    if f"{tag}/recovery_error" not in c:
        ax.axis("off")
        return
    plain = c[f"plain/L{depth}/gf/recovery_error"][:, :1]
    ratio = np.log10(c[f"{tag}/recovery_error"] / plain)
    image = ax.imshow(
        ratio.T, origin="lower", cmap="RdBu_r", vmin=-4, vmax=4, aspect="auto"
    )
    scales, ratios = c["scales"], c["ratios"]
    ax.set_xticks(range(len(scales)), [f"{a:g}" for a in scales])
    ax.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    for i in range(len(scales)):
        for j in range(len(ratios)):
            mark = "K" if c[f"{tag}/implicit"][i, j] else ""
            if not c[f"{tag}/converged"][i, j]:
                mark += "!"
            ax.text(
                i, j, f"{ratio[i, j]:.1f}{mark}", ha="center", va="center", fontsize=8
            )
    ax.figure.colorbar(image, ax=ax, label="log10(polar error / plain GF error)")
    ax.set(
        xlabel="init scale α",
        ylabel="rate ratio ρ",
        title=f"polar L={depth} {METHOD_NAMES[method]} / plain GF "
        "(K: Kvaerno5, !: not converged)",
    )
