"""wn-robust-bias's rows: one per grid point from the grids' values, the gaps to
the predicted limits, the headline findings and the precision notes."""

import math

import numpy as np

from .. import dynamics
from ._wn_robust_bias_stall import stalled
from ._wn_robust_bias_steps import EXTEND
from ._wn_robust_bias_support import at_saddle
from ._wn_robust_bias_train import DISCRETE_ONLY, METHOD_NAMES, ULPS


def _status_name(code: int, settle: float, escape: float, horizon: float) -> str:
    """The row's status: "converged" (L < tol), "saddle" (the budget ran out
    where the flow's settle time (L/‖∇L‖²_P)·ln(L/tol) and its escape time
    both exceed the run's horizon: stalled for good near a stationary point
    with L > tol, `_wn_robust_bias_stall`), else the run's own status."""
    name = dynamics.status_name(code)
    stopped = name in ("event_occurred", "diverged")  # not by its budget
    if not stopped and stalled(settle, escape, horizon):
        return "saddle"
    if name == "event_occurred":
        return "converged"
    if name == "successful":
        return "budget"  # ran out of steps / time before L < tol
    return {"max_steps_reached": "max_steps"}.get(name, name)


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


def rows_for(family, depth, method, values, s, theory) -> list[dict]:
    """One row per grid point of one (family, depth, method)."""
    rows = []

    def lr_time(i, j):  # GD's clock: the budget spans budget·η of flow time
        return float(values["time"][i, j]) / max(int(values["steps"][i, j]), 1)

    ratios = s["ratios"] if family != "plain" else (None,)
    for i, scale in enumerate(s["scales"]):
        for j, ratio in enumerate(ratios):
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
                    status=_status_name(
                        int(values["status"][i, j]),
                        float(values["settle_time"][i, j]),
                        float(values["escape_time"][i, j]),
                        s["t1"]
                        if method == "gf"
                        else float(values["budget"][i, j]) * lr_time(i, j),
                    ),
                    efolding_time=_float(values["efolding_time"][i, j]),
                    settle_time=_float(values["settle_time"][i, j]),
                    escape_time=_float(values["escape_time"][i, j]),
                    solver=(
                        ("Kvaerno5" if values["implicit"][i, j] else "Tsit5")
                        if method == "gf"
                        else "-"
                    ),
                    r_inf=_floats(values["radius"][i, j], family),
                    direction_norm=_floats(values["direction_norm"][i, j], family),
                    alpha_eff=_floats(values["alpha_eff"][i, j], family),
                    theory_error=_float(theory["error"][i, j]),
                    limit_gap=_float(theory["gap"][i, j]),
                    support=int(values["support"][i, j]),
                    support_gap=_float(values["support_gap"][i, j]),
                    **_discrete(values, i, j, method, s),
                )
            )
    return _with_reasons(rows)


def _discrete(values, i, j, method, s) -> dict:
    """A discrete row's step record (`local_descent`): the steps taken
    (`lr_min`, `lr_max`), the segments undone, the final per-step contraction q,
    the steps it needs to L < tol at q, and its budget; None for a flow."""
    if method == "gf":
        return dict.fromkeys(DISCRETE_ONLY)
    out = {k: _float(values[k][i, j]) for k in DISCRETE_ONLY}
    out["undone"], out["budget"] = int(out["undone"]), int(out["budget"])
    return out


def _with_reasons(rows) -> list[dict]:
    for row in rows:
        row["reason"] = reason(row)
    return rows


def _g(x, spec: str = ".3g") -> str:
    """A number of a row as text; a non-finite one is None there: "∞"."""
    return "∞" if x is None else format(x, spec)


def reason(row) -> str:
    """Why a row stopped, in words."""
    status = row["status"]
    if status == "converged":
        return f"L < tol in {row['steps']} steps"
    if status == "saddle":
        return _saddle_reason(row)
    if status == "max_steps" and row.get("budget") is not None:
        return (
            f"budget of {row['budget']} steps used at L = {row['final_loss']:.2g}; "
            f"at its final rate q = 1 − {_g(_shortfall(row['rate']), '.2g')} per "
            f"step it needs ~{_g(row['steps_needed'])} steps ({_times(row)})"
        )
    if status == "diverged":
        return "diverged even at 2⁻⁴⁰ of the local step"
    if status == "max_steps":  # a flow: its budget spent, not stalled for good
        return (
            f"step budget spent at t = {row['time']:.3g}, L = {row['final_loss']:.2g} "
            f"({_times(row)})"
        )
    return f"{status} at L = {row['final_loss']:.2g}"


def _shortfall(rate):
    """1 − q of a contraction q (None where q is not finite)."""
    return None if rate is None else 1 - rate


def _times(row) -> str:
    """A run's settle and escape times, as a reason states them."""
    return (
        f"settle time {_g(row['settle_time'])}, escape time "
        f"{_g(row['escape_time'])}: one of them within the horizon"
    )


def _saddle_reason(row) -> str:
    """A stalled run's reason, with the check of which saddle it sits at
    (`_wn_robust_bias_support`)."""
    stalled = (
        f"the settle time (L/‖∇L‖²_P)·ln(L/tol) = {_g(row['settle_time'])} and the "
        f"escape time {_g(row['escape_time'])} beyond the run's horizon"
    )
    k, gap = row["support"], row["support_gap"]
    if at_saddle(gap):
        return (
            f"stalled at the saddle fitting {k} coordinate{'s' * (k != 1)} by least "
            f"squares (L = {row['final_loss']:.3g} = their fit's loss to "
            f"{_g(gap, '.1g')} relative); {stalled}"
        )
    return (
        f"stalled at L = {row['final_loss']:.2g}: {stalled}; not the least-squares "
        f"fit on its {k} coordinates (|L − L_S|/L = {_g(gap, '.2g')})"
    )


def _counts(runs, what: str, tol: float) -> str:
    """How many of `runs` converged to L < `tol` and how many stalled at a
    checked saddle."""
    done = sum(r["status"] == "converged" for r in runs)
    saddles = sum(
        r["status"] == "saddle" and at_saddle(r.get("support_gap")) for r in runs
    )
    return (
        f"{done} of {len(runs)} {what} converged to L < {tol:.3g}, {saddles} "
        "stalled at a checked saddle (a least-squares fit on a subset of coordinates)"
    )


def _not_converged(runs) -> list[str]:
    out = []
    for r in runs:
        if r["status"] != "converged":
            ratio = "" if r["ratio"] is None else f" ρ={r['ratio']:g}"
            out.append(
                f"not converged: {r['model']} L={r['depth']} "
                f"{METHOD_NAMES[r['method']]} α={r['scale']:g}{ratio}: {r['reason']}"
            )
    return out


def flow_notes(rows, tol) -> list[str]:
    """The flows: how many converged to L < `tol`, how many stalled at a checked
    saddle, and each other one with its reason."""
    runs = [r for r in rows if r["method"] == "gf"]
    if not runs:
        return []
    return [_counts(runs, "flows", tol)] + _not_converged(runs)


def discrete_notes(rows, settings, tol=None) -> list[str]:
    """The discrete runs' step rule and budget, how many converged to the loss
    threshold they ran with (`tol`: the settings' unless the dtype raised it),
    and each other one with its reason."""
    runs = [r for r in rows if r["method"] != "gf"]
    if not runs:
        return []
    s = settings
    tol = s["tol"] if tol is None else tol
    rule = (
        f"GD/rPGD/SK step: η = {s['step']:g}·2/λ_max(P^½∇²L P^½) (P: 1 on r, ρ on θ),"
        f" re-estimated every {s['segment']} steps by Lanczos; budget "
        f"{s['steps']} steps per point, extended on a linear tail to "
        f"{EXTEND:g}× the steps it needs, at most {s['steps_cap']}: "
    )
    return [rule + _counts(runs, "discrete points", tol)] + _not_converged(runs)


def limit_gaps(rows) -> dict:
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
    error, the stacked polar flow's best error over ρ, and the best discrete
    polar variant's error, each as a ratio to the plain error."""
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


def precision_notes(rows, fits, curves) -> list[str]:
    """What the run's dtype changed: the tolerances raised (`attainable`), and
    how many recovery errors (relative to ‖β*‖) and limit gaps are within 100ε,
    i.e. round-off (a 0 among them is left out of the log-scale panels)."""
    precision = fits.get("precision")
    if not precision:
        return []
    floor = ULPS * precision["eps"]
    scale = float(np.linalg.norm(curves["truth"]))
    errors = sum(r["recovery_error"] <= floor * scale for r in rows)
    gaps = sum(r["limit_gap"] is not None and r["limit_gap"] <= floor for r in rows)
    raised = precision["raised"]
    out = []
    if raised:
        changes = ", ".join(
            f"{k} {v['asked']:.3g} → {v['used']:.3g}" for k, v in raised.items()
        )
        out.append(
            f"{precision['dtype']} (ε = {precision['eps']:.3g}): tolerances below "
            f"{ULPS}ε raised to what it resolves: {changes}"
        )
    if errors or gaps:
        out.append(
            f"at {precision['dtype']} resolution (≤ {ULPS}ε = {floor:.2g} relative, "
            f"round-off): {errors} recovery errors, {gaps} limit gaps"
        )
    return out


def alpha_label(scale) -> str:
    return f"α={scale:g}"


def table_rows(rows) -> list[dict]:
    """One row per (model, depth, method, ρ), with the recovery error per α as
    text: `*` where the flow was solved by Kvaerno5, `!` where the run did not
    converge in its budget, `~` where it stalled at a saddle (`_status_name`)."""
    groups = {}
    for r in rows:
        key = (r["model"], r["depth"], r["method"], r["ratio"])
        group = groups.setdefault(
            key,
            dict(
                model=r["model"],
                depth=r["depth"],
                method=METHOD_NAMES[r["method"]],
                ratio=r["ratio"],
            ),
        )
        mark = "*" if r["solver"] == "Kvaerno5" else ""
        mark += dict(converged="", saddle="~").get(r["status"], "!")
        group[alpha_label(r["scale"])] = f"{r['recovery_error']:.2e}{mark}"
    return list(groups.values())
