"""Gradient flow at equal accuracy: flowgap vs scipy, torchdiffeq and tiny-step GD.

Run: `.venv/bin/python benchmarks/bench_flow.py [--quick]`. A full run prints the
tables below and appends them, with the date, machine and load, to
`benchmarks/RESULTS.md`; `--quick` (easy case only, 3-rung GD ladder; 26 s at load
6) only prints.

Problem: `problems.sparse_recovery(key(0), 40, 200, sparsity=5)`, depth-2
`DiagonalNet` (helpers from `bench_core.py`), float64; the flow dθ/dt = −∇L(θ),
θ = (u, v), L = 0.5 mean((X beta - y)^2), beta = u^2 - v^2, saved at 101 equally
spaced times ts in [0, t1]. Cases: init 0.1, t1 = 100; init 1e-6, t1 = 10^4
(saddle-to-saddle plateaus; bench_core's plateau case).

Error of a solution Y (its 101 saves) against the reference R:
- "traj err" = max_i ||Y(t_i) - R(t_i)|| / ||R(t_i)|| over the 101 saves;
- "final err" = the same at t1 alone.
Reference R: scipy DOP853 at rtol 1e-13, atol 1e-17, chained save to save (100
solves, each ending exactly at the next t_i), so no solver's dense interpolant
enters R. (scipy's own `t_eval` interpolation at rtol 1e-12 is off by 2e-9
relative on the easy case; the chained reference agrees with a chained rtol 1e-12
solve to 3e-12 and with flowgap Dopri8 at rtol 1e-13 to 1e-12.)

Methods (all return the 101 saves):
- anchor: `flowgap.gradient_flow` at its defaults (Tsit5, rtol 1e-8, atol 1e-10,
  PI control 0.3/0.3): its errors E_traj, E_final set the target accuracy.
- `scipy.integrate.solve_ivp(method="DOP853" | "LSODA", t_eval=ts)` with bench_core's
  hand-coded numpy gradient;
- `torchdiffeq.odeint(method="dopri5")` at float64, 2 torch threads, the gradient
  from torch autograd of the same loss (`torch.autograd.grad`), as a user writes it;
- info: `flowgap.gradient_flow(solver=Dopri8())`.
Each is run on a ladder of tolerances rtol = 1e-4, 1e-5, ..., 1e-13 with atol =
rtol / 100 (flowgap's default ratio), loosest first; for each error metric we
keep the loosest rung whose error <= flowgap's (the cheapest, as cost grows as
the tolerance tightens). "work" is gradient evaluations (scipy `nfev`, a counter
in the torch field, flowgap's `num_grad_evals`; LSODA's count includes its
finite-difference Jacobians).

Tiny-step GD (GF approximated by `flowgap.gradient_descent` with learning rate
lr, t1 / lr steps, saves at the same ts): errors at a ladder of lr, a
least-squares line log err = p log lr + c (p ~ 1: GD is Euler's method), and the
lr* where the line meets flowgap's error. If lr* is below the ladder it is
extrapolated, never run: its time is t1 / lr* steps times the measured seconds
per step (of the longest ladder run up to 10^6 steps, timed with the others).

Timing: bench_core's `time_interleaved` (one warm-up call, then rounds that
interleave all timed solves so load from other processes hits them alike; the
minimum over rounds). "vs flowgap" = t(method) / t(flowgap at defaults) at equal
accuracy: > 1 means flowgap is faster.
"""

import os

# numpy/scipy's OpenBLAS on one thread, set before numpy loads: with its default 2
# threads, LSODA's dense LU (400 x 400) took 7-21 s instead of 0.55 s per plateau
# solve on this shared 2-core machine (spinning threads fighting the load). Only
# numpy/scipy read it (XLA and torch have their own pools). Override from the shell.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from bench_core import (
    RESULTS,
    append_results,
    machine_info,
    numpy_field,
    problem,
    table,
    theta,
    time_interleaved,
)

import flowgap

N, D = 40, 200
SAVES = 101
ATOL_PER_RTOL = 1e-2  # flowgap's default atol / rtol = 1e-10 / 1e-8
REF_RTOL, REF_ATOL = 1e-13, 1e-17
TORCH_THREADS = 2
GD_TIMED_STEPS = 10**6  # GD s/step is timed on the longest run up to this


@dataclass(frozen=True)
class Case:
    scale: float
    t1: float
    gd_lrs: tuple[float, ...]  # GD ladder; t1 / lr must be a multiple of SAVES - 1


@dataclass(frozen=True)
class Config:
    quick: bool
    cases: tuple[Case, ...]
    rtols: tuple[float, ...]
    min_sample: float  # seconds per timing sample (read by time_interleaved)
    rounds: int


FULL = Config(
    quick=False,
    cases=(
        Case(0.1, 100.0, (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)),
        Case(1e-6, 10_000.0, (1e-2, 5e-3, 2e-3)),
    ),
    rtols=tuple(10.0**-k for k in range(4, 14)),
    min_sample=0.5,
    rounds=3,
)
QUICK = Config(
    quick=True,
    cases=(Case(0.1, 100.0, (1e-2, 5e-3, 2e-3)),),
    rtols=tuple(10.0**-k for k in range(4, 14)),
    min_sample=0.05,
    rounds=2,
)


# --------------------------------------------------------------- the solvers


def stacked(u, v) -> np.ndarray:
    """(saves, 2d) array of θ = (u, v) at every save."""
    return np.concatenate([np.asarray(u), np.asarray(v)], axis=-1)


def flowgap_solve(prob, model, case, ts, solver=None, rtol=1e-8, atol=1e-10):
    """`solve()` -> (saves, gradient evaluations); defaults = gradient_flow's."""
    ts = jnp.asarray(ts)

    def solve():
        traj = flowgap.gradient_flow(
            prob.loss,
            model,
            t1=case.t1,
            ts=ts,
            solver=solver,
            rtol=rtol,
            atol=atol,
            throw=True,
        )
        jax.block_until_ready(traj)
        return stacked(traj.models.u, traj.models.v), int(traj.stats["num_grad_evals"])

    return solve


def scipy_solve(prob, model, case, ts, method, rtol, atol):
    from scipy.integrate import solve_ivp

    field = numpy_field(prob.inputs, prob.targets)
    theta0 = stacked(*theta(model))

    def solve():
        sol = solve_ivp(
            field,
            (0.0, case.t1),
            theta0,
            method=method,
            t_eval=ts,
            rtol=rtol,
            atol=atol,
        )
        if not sol.success:
            raise RuntimeError(f"solve_ivp {method} failed: {sol.message}")
        return sol.y.T, sol.nfev

    return solve


def torch_solve(prob, model, case, ts, rtol, atol):
    """torchdiffeq dopri5 on the field −∇L, ∇L from torch autograd."""
    import torch
    from torchdiffeq import odeint

    torch.set_num_threads(TORCH_THREADS)
    x = torch.tensor(np.asarray(prob.inputs))
    y = torch.tensor(np.asarray(prob.targets))
    theta0 = torch.tensor(stacked(*theta(model)))
    t = torch.tensor(np.asarray(ts))
    calls = [0]

    def field(_, th):
        calls[0] += 1
        with torch.enable_grad():
            th = th.detach().requires_grad_(True)
            u, v = th[:D], th[D:]
            loss = 0.5 * torch.mean((x @ (u * u - v * v) - y) ** 2)
            (grad,) = torch.autograd.grad(loss, th)
        return -grad

    def solve():
        calls[0] = 0
        with torch.no_grad():
            ys = odeint(field, theta0, t, method="dopri5", rtol=rtol, atol=atol)
        return ys.numpy(), calls[0]

    return solve


def gd_solve(prob, model, case, lr):
    steps = round(case.t1 / lr)

    def solve():
        traj = flowgap.gradient_descent(
            prob.loss,
            model,
            lr=lr,
            steps=steps,
            save_every=steps // (SAVES - 1),
            throw=True,
        )
        jax.block_until_ready(traj)
        return stacked(traj.models.u, traj.models.v), steps

    return solve


LADDERS = {
    "scipy DOP853": lambda p, m, c, ts, r, a: scipy_solve(p, m, c, ts, "DOP853", r, a),
    "scipy LSODA": lambda p, m, c, ts, r, a: scipy_solve(p, m, c, ts, "LSODA", r, a),
    "torchdiffeq dopri5": torch_solve,
    "info: flowgap Dopri8": lambda p, m, c, ts, r, a: flowgap_solve(
        p, m, c, ts, diffrax.Dopri8(), r, a
    ),
}
METRICS = ("traj", "final")


# ------------------------------------------------------------------ accuracy


def reference(prob, model, ts) -> np.ndarray:
    """Tight scipy DOP853, chained save to save (no interpolation)."""
    from scipy.integrate import solve_ivp

    field = numpy_field(prob.inputs, prob.targets)
    saves = [stacked(*theta(model))]
    for a, b in zip(ts[:-1], ts[1:]):
        sol = solve_ivp(
            field, (a, b), saves[-1], method="DOP853", rtol=REF_RTOL, atol=REF_ATOL
        )
        saves.append(sol.y[:, -1])
    return np.stack(saves)


def errors(saves, ref) -> dict:
    rel = np.linalg.norm(saves - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"traj": float(np.max(rel)), "final": float(rel[-1])}


@dataclass
class Rung:
    method: str
    setting: str  # "rtol 1e-08" or "lr 0.01"
    solve: object
    err: dict
    work: int


def run_rung(method, setting, solve, ref) -> Rung:
    start = time.perf_counter()
    saves, work = solve()
    rung = Rung(method, setting, solve, errors(saves, ref), work)
    print(
        f"  {method}, {setting}: traj err {rung.err['traj']:.2e}, "
        f"{time.perf_counter() - start:.2f} s",
        file=sys.stderr,
        flush=True,
    )
    return rung


def climb(method, make, target, ref, cfg) -> tuple[dict, list]:
    """Run the ladder loosest first until both metrics meet `target`.

    Returns ({metric: first passing Rung or None}, all rungs run)."""
    chosen, rungs = dict.fromkeys(METRICS), []
    for rtol in cfg.rtols:
        rung = run_rung(
            method, f"rtol {rtol:.0e}", make(rtol, rtol * ATOL_PER_RTOL), ref
        )
        rungs.append(rung)
        for m in METRICS:
            if chosen[m] is None and rung.err[m] <= target[m]:
                chosen[m] = rung
        if all(chosen.values()):
            break
    return chosen, rungs


def gd_fit(rungs, target) -> dict:
    """Per metric: slope p, and lr* where log err = p log lr + c meets target."""
    lrs = np.log([float(r.setting.split()[1]) for r in rungs])
    fits = {}
    for m in METRICS:
        p, c = np.polyfit(lrs, np.log([r.err[m] for r in rungs]), 1)
        fits[m] = (p, math.exp((math.log(target[m]) - c) / p))
    return fits


# ------------------------------------------------------------------ one case


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ladder_row(rung, picks=None) -> tuple:
    chosen_for = ", ".join(m for m in METRICS if picks and picks[m] is rung)
    errs = [f"{rung.err[m]:.2e}" for m in METRICS]
    return (rung.method, rung.setting, *errs, rung.work, chosen_for)


def run_ladders(prob, model, case, ts, target, ref, cfg):
    """({method: {metric: chosen Rung or None}}, GD rungs, ladder table rows)."""
    chosen, rows = {}, []
    for method, make in LADDERS.items():
        picks, rungs = climb(
            method,
            lambda r, a, make=make: make(prob, model, case, ts, r, a),
            target,
            ref,
            cfg,
        )
        chosen[method] = picks
        rows += [ladder_row(r, picks) for r in rungs]
    gd_rungs = [
        run_rung("tiny-step GD", f"lr {lr:g}", gd_solve(prob, model, case, lr), ref)
        for lr in case.gd_lrs
    ]
    return chosen, gd_rungs, rows + [ladder_row(r) for r in gd_rungs]


def timings(anchor, chosen, gd_timed, cfg) -> dict:
    """Interleaved seconds per solve of the anchor, each chosen rung and one GD
    run, keyed by the Rung's id."""
    rungs = [anchor, gd_timed] + [
        rung for picks in chosen.values() for rung in picks.values() if rung
    ]
    unique = {id(r): r for r in rungs}
    return time_interleaved({k: r.solve for k, r in unique.items()}, cfg)


def solver_row(label, metric, rung, seconds, t_flowgap) -> tuple:
    if rung is None:
        return (label, metric, "not reached", "", "", "", "", "")
    t = seconds[id(rung)]
    errs = [f"{rung.err[m]:.2e}" for m in METRICS if metric in (m, "both")]
    ratio = f"{t / t_flowgap:.2f}"
    return (
        label,
        metric,
        rung.setting,
        " / ".join(errs),
        rung.work,
        fmt_time(t),
        ratio,
        "",
    )


def gd_rows(case, gd_rungs, target, per_step, t_flowgap) -> list:
    lrs = [float(r.setting.split()[1]) for r in gd_rungs]
    rows = []
    for m, (slope, lr_star) in gd_fit(gd_rungs, target).items():
        steps = case.t1 / lr_star
        how = "interpolated" if min(lrs) <= lr_star <= max(lrs) else "extrapolated"
        rows.append(
            (
                "tiny-step GD",
                m,
                f"lr* {lr_star:.2e} ({how})",
                f"{target[m]:.2e}",
                f"{steps:.2e}",
                fmt_time(per_step * steps),
                f"{per_step * steps / t_flowgap:.3g}",
                f"fit slope {slope:.3f}",
            )
        )
    return rows


RATIO_HEADERS = (
    "method",
    "matched on",
    "setting",
    "error",
    "work",
    "time/solve",
    "vs flowgap",
    "note",
)


def bench_case(case: Case, cfg: Config) -> str:
    prob, model = problem(N, D, case.scale)
    ts = np.linspace(0.0, case.t1, SAVES)
    start = time.perf_counter()
    ref = reference(prob, model, ts)
    ref_seconds = time.perf_counter() - start
    anchor = run_rung(
        "flowgap (defaults)",
        "Tsit5 rtol 1e-08",
        flowgap_solve(prob, model, case, ts),
        ref,
    )
    target = anchor.err
    chosen, gd_rungs, ladder_rows = run_ladders(prob, model, case, ts, target, ref, cfg)
    gd_timed = max(
        (r for r in gd_rungs if r.work <= GD_TIMED_STEPS), key=lambda r: r.work
    )
    seconds = timings(anchor, chosen, gd_timed, cfg)
    t_flowgap = seconds[id(anchor)]
    per_step = seconds[id(gd_timed)] / gd_timed.work

    rows = [solver_row("flowgap (defaults)", "both", anchor, seconds, t_flowgap)]
    for method, picks in chosen.items():
        rows += [solver_row(method, m, picks[m], seconds, t_flowgap) for m in METRICS]
    rows += gd_rows(case, gd_rungs, target, per_step, t_flowgap)
    return "\n".join(
        [
            f"GF {N}x{D}, init {case.scale:g}, t1 {case.t1:g}, {SAVES} saves. Target "
            f"= flowgap defaults' error: traj {target['traj']:.2e}, final "
            f"{target['final']:.2e}. Reference: chained DOP853 rtol {REF_RTOL:g}, "
            f"atol {REF_ATOL:g} ({ref_seconds:.1f} s). Error column of the first "
            "row: traj / final.",
            table(RATIO_HEADERS, rows),
            f"GD time = t1/lr* steps x {per_step * 1e6:.3f} us/step, measured on the "
            f"{gd_timed.setting} run ({gd_timed.work} steps) in the same rounds; "
            "t1/lr* steps are not run.",
            "",
            "Ladders (errors vs reference; work = gradient evaluations or GD steps):",
            table(
                ["method", "setting", "traj err", "final err", "work", "chosen for"],
                ladder_rows,
            ),
        ]
    )


# -------------------------------------------------------------------- report


def run(cfg: Config) -> None:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = (
        f"{machine_info()}, torchdiffeq {version('torchdiffeq')}; "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, torch threads "
        f"{TORCH_THREADS}"
    )
    print(info)
    if cfg.quick:
        print("QUICK MODE: easy case, short GD ladder; RESULTS.md is not written.")
    print(f"load average (1 min) at start: {load0:.2f}\n")
    sections = []
    for case in cfg.cases:
        sections.append(bench_case(case, cfg))
        print(sections[-1] + "\n", flush=True)
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print(f"total {wall:.0f} s; load average (1 min) at end: {load1:.2f}")
    if not cfg.quick:
        append_results(
            info, "\n\n".join(sections), wall, (load0, load1), "bench_flow.py"
        )
        print(f"appended to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test (< 1 min), no RESULTS.md"
    )
    run(QUICK if parser.parse_args().quick else FULL)


if __name__ == "__main__":
    main()
