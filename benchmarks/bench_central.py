r"""The central flow at equal accuracy: `flowgap.dynamics.central_flow` (adaptive
Diffrax steps, the QP in JAX) against the algorithm of the reference implementation
alex-damian/central_flows_jax (fixed Euler substeps, warm-started eigenpairs, the
QP on the host through a callback), re-implemented here on equal footing; and a
vmapped batch of learning rates as one compiled program, which the reference's
host callback rules out.

Run: `.venv/bin/python benchmarks/bench_central.py [--quick]`. A full run prints
the tables and appends them, with the date, machine and load, to
`benchmarks/RESULTS.md`; `--quick` (t1 = 16, target 1e-3, m up to 8, truth at
rtol 1e-9, one timing sample; about 90 s at load 5 on 2 cores) only prints.

Problem (GD past the edge of stability): `problems.teacher_student(key, n=64, d=5,
teacher_width=8, activation="tanh", decay=0.5)` and `models.MLP(5, 32, 1,
depth=2, activation="tanh")` (D = 1281), keys split from `key(0)`; half mean
squared error, float64; GD step η = 0.4 on flowgap's clock t = kη; window
[0, t1], t1 = 40 (100 GD steps). The sharpness touches 2/η = 5 near t = 1, falls
back, and is held at the edge from t ≈ 13 on; the first table shows it
(sharpness·η/2 and tr Σ of the truth at its saves; the run stops if tr Σ = 0 at
t1). Both methods hold k = 1 eigenvalue, run the same 20-step Lanczos (flowgap's
`lanczos`, full reorthogonalisation) per evaluation and solve the same QP
(`flowgap/dynamics/_central.py`):

$$\dot\theta = -\Big[\nabla L + \tfrac12 \textstyle\sum_{ab} X_{ab} g_{ab}\Big],
\quad X = \arg\min_{X \succeq 0} \tfrac14\langle X, \mathcal B[X]\rangle
  + \langle C, X\rangle,\quad C = \kappa(\tfrac2\eta I - R) + \alpha',
\quad \kappa = 1/\eta .$$

Methods:
- flowgap: `jax.jit` of `central_flow(loss, model, lr=η, t1=t1, ts=ts, k=1,
  lanczos_steps=20, rtol=rtol, atol=rtol/100)` (Tsit5, PI control; its
  diagnostics at the 9 saves ts are inside the timed call), η and rtol traced:
  one compiled program for every rtol and every η.
- reference algorithm: explicit Euler with m substeps of dt = η/m per GD step
  under `jax.jit` (m traced: one compiled program), Lanczos warm-started from the
  previous substep's Ritz vectors, and the k×k QP on the host through
  `jax.pure_callback`, by scipy's generic `trust-exact` (the reference calls
  cvxpy). κ = 1/η as in flowgap (the reference's κ = 1/dt changes its flow with
  m), so both converge to one flow and their errors can be compared.
  `central_reference.py` states it in full.
- info: the same Euler scheme with the k = 1 QP in closed form inside JAX (no
  callback; not the reference's algorithm): how much of the reference's time is
  the host QP and how much the fixed substeps.

Equal accuracy. Truth: flowgap at rtol 1e-10 (atol 1e-12; it agrees with rtol
1e-11 to 1e-9, and with 40 Lanczos steps to 5e-11). Error = ‖θ(t1) − θ_true(t1)‖
/ ‖θ_true(t1)‖. The reference doubles m from 1 until its error is at most the
target (1e-4) or m reaches 128. If the target is not reached (Euler is first
order: the error halves with each doubling), m* is where the least-squares line
log err = p log m + c through the last three rungs meets the target, and its time
is m*/m times the time measured at the largest m run: extrapolated, not run, as
`bench_flow.py` does for tiny-step GD. Two error bars: the reference's error at
its largest m run (both sides measured), and the target. At each bar flowgap
takes the loosest rtol of 1e-2, 1e-3, ..., 1e-9 whose error is within the bar.
"grad evals": gradients, Hessian–vector and third-derivative products, one each
(flowgap's `num_grad_evals`; the reference's (1 + 20 + 1) per substep). "ms per
unit t" = warm milliseconds per solve / t1. Compilation (tracing, lowering and
XLA compile, summed from `jax.monitoring`'s duration events) is reported apart.

Batch: eight learning rates η in [0.3, 0.5], t1 fixed, flowgap at the rtol
chosen for the target: `jax.jit(jax.vmap(solve))` against the solo program
called eight times in turn. Traces of the batch function and XLA compiles are
counted over two calls with different learning rates. The vmapped runs step in
lock-step until the slowest is done, so on a CPU the batch does not beat the
sequential calls (see `bench_sweep.py`). The reference's per-substep host
callback cannot be vmapped (`jax.pure_callback` without a `vmap_method`, as the
reference calls it, raises; with `vmap_method="sequential"` it would call the host
once per run and substep): the last line shows the attempt.

Timing: each program's warm seconds per call are the minimum over `rounds`
samples: its ladder call, then interleaved calls (repeated to at least
`min_sample` s). XLA compiles inside timed calls are counted (they should be 0).
"""

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from bench_core import append_results, table
from central_batch import batch_section, vmap_attempt_section
from central_reference import HostQP, closed_form, host_callback
from central_setup import (
    FULL,
    LR,
    PER_SUBSTEP,
    QUICK,
    Config,
    K,
    Timer,
    Truth,
    compilations,
    integer,
    machine_info,
    real,
    reference,
    rel,
    truth_section,
)

# --------------------------------------------------------- the reference ladder


@dataclass(frozen=True)
class ReferenceLadder:
    """The reference algorithm's compiled `solve` and `rungs` (m, error, host
    calls, solver runs, host seconds), and m* where its error meets the target,
    with the fitted slope (the largest m run and NaN where a rung met it)."""

    solve: Callable
    qp: HostQP
    compile_seconds: float
    rungs: list
    m_star: float
    slope: float

    @property
    def m_run(self) -> int:
        return self.rungs[-1][0]

    @property
    def err_run(self) -> float:
        return self.rungs[-1][1]

    def bars(self, target: float) -> dict:
        """The error bars: its error at the largest m run, and the target (that
        error again where a rung met the target)."""
        reached = self.err_run <= target
        return {"run": self.err_run, "target": self.err_run if reached else target}


def reference_rungs(ref, qp, theta0, truth, cfg, timer) -> list:
    """(m, error, host calls, solver runs, host seconds) for m = 1, 2, 4, ... up
    to the target or `cfg.max_m`."""
    rungs, m = [], 1
    while True:
        qp.reset()
        final = timer(f"reference {m}", lambda m=m: ref(theta0, real(LR), integer(m)))
        rungs.append((m, rel(final, truth), qp.calls, qp.solves, qp.seconds))
        err = rungs[-1][1]
        if err <= cfg.target or 2 * m > cfg.max_m:
            return rungs
        m *= 2


def extrapolate(rungs, target) -> tuple[float, float]:
    """m where the least-squares line log err = p log m + c of the last three
    rungs meets `target`, and the slope p."""
    m, err = np.log([r[0] for r in rungs[-3:]]), np.log([r[1] for r in rungs[-3:]])
    p, c = np.polyfit(m, err, 1)
    return float(np.exp((np.log(target) - c) / p)), float(p)


def reference_section(truth: Truth, timer: Timer) -> ReferenceLadder:
    """Compile the reference algorithm (the QP on the host), run its ladder, and
    extrapolate m* where the ladder stops short of the target."""
    cfg = truth.cfg
    qp = HostQP(K)
    ref = jax.jit(reference(truth, host_callback(qp)))
    with compilations() as record:
        jax.block_until_ready(ref(truth.theta0, real(LR), integer(1)))
    rungs = reference_rungs(ref, qp, truth.theta0, truth.theta, cfg, timer)
    m_run, err_run = rungs[-1][:2]
    reached = err_run <= cfg.target
    m_star, slope = (m_run, math.nan) if reached else extrapolate(rungs, cfg.target)
    return ReferenceLadder(ref, qp, record["seconds"], rungs, m_star, slope)


# ----------------------------------------------------------- flowgap's ladder


def flowgap_ladder(ours, params, truth, bar, cfg, timer) -> dict:
    """rtol → (error, steps, gradient evaluations), loosest first, until the
    error is at most `bar`."""
    out = {}
    for rtol in cfg.rtols:
        final, steps, work, _ = timer(
            f"flowgap {rtol:g}",
            lambda rtol=rtol: ours(params, real(LR), real(rtol)),
        )
        out[rtol] = (rel(final, truth), int(steps), int(work))
        if out[rtol][0] <= bar:
            break
    return out


def loosest(ladder: dict, bar: float) -> float:
    return next(r for r, (err, *_) in ladder.items() if err <= bar)


def flowgap_section(truth: Truth, bars: dict, timer: Timer) -> tuple[dict, dict]:
    """flowgap's ladder down to the tighter bar, and the loosest rtol within each
    bar (bar name → rtol)."""
    ladder = flowgap_ladder(
        truth.ours, truth.params, truth.theta, min(bars.values()), truth.cfg, timer
    )
    return ladder, {name: loosest(ladder, bar) for name, bar in bars.items()}


# ---------------------------------------------------- the equal-accuracy table


def info_run(truth: Truth, m: int, timer: Timer) -> tuple[Callable, float, float]:
    """The info row's program (the same Euler scheme, the k = 1 QP in closed form
    in JAX), compiled and run at m: (program, error, compile seconds)."""
    lr = real(LR)
    inline = jax.jit(reference(truth, closed_form))
    with compilations() as record:
        jax.block_until_ready(inline(truth.theta0, lr, integer(1)))
    final = timer("inline", lambda: inline(truth.theta0, lr, integer(m)))
    return inline, rel(final, truth.theta), record["seconds"]


def warm_rounds(truth, ref, inline, chosen: dict, timer: Timer) -> dict:
    """Interleaved timing rounds of the table's programs: flowgap at the chosen
    rtols, the reference algorithm and the info row at the largest m run."""
    ours, params, theta0, lr = truth.ours, truth.params, truth.theta0, real(LR)
    m_run = ref.m_run
    fns = {
        f"flowgap {rtol:g}": lambda rtol=rtol: ours(params, lr, real(rtol))
        for rtol in sorted(set(chosen.values()), reverse=True)
    }
    fns[f"reference {m_run}"] = lambda: ref.solve(theta0, lr, integer(m_run))
    fns["inline"] = lambda: inline(theta0, lr, integer(m_run))
    return timer.rounds(fns, truth.cfg.rounds - 1)


def ms_per_unit_t(seconds: float, t1: float) -> str:
    return f"{seconds / t1 * 1e3:.1f}"


def flowgap_row(bar, rtol, rung, seconds, t1) -> tuple:
    """flowgap's row at `bar`: its `rung` (error, steps, gradient evaluations) at
    `rtol`, solved in `seconds`."""
    err, steps, work = rung
    setting, timing = f"Tsit5 rtol {rtol:g}", ms_per_unit_t(seconds, t1)
    cells = (f"{bar:.2e}", "flowgap", setting, f"{err:.2e}", steps, work, timing)
    return (*cells, "1.0", "")


def euler_row(method, setting, err, seconds, substeps, ours, note, t1) -> tuple:
    """A row of the Euler scheme: `substeps` substeps in `seconds`, against
    flowgap's `ours` seconds."""
    work = f"{substeps * PER_SUBSTEP:.0f}"
    timing = (ms_per_unit_t(seconds, t1), f"{seconds / ours:.1f}", note)
    return ("", method, setting, f"{err:.2e}", f"{substeps:.0f}", work, *timing)


def accuracy_rows(truth, ref, ladder, chosen, times, per_substep, inline_err):
    """Per error bar: flowgap at the loosest rtol within it, then the reference
    algorithm and the info row at m (the largest m run, or the extrapolated m*),
    their times from `per_substep` (seconds per substep of each) at m."""
    cfg, steps, m_run = truth.cfg, truth.steps, ref.m_run
    rows = []
    for name, bar in ref.bars(cfg.target).items():
        rtol = chosen[name]
        ours = times[f"flowgap {rtol:g}"]
        m = m_run if name == "run" else ref.m_star
        measured = m == m_run
        note = "" if measured else f"m extrapolated, slope {ref.slope:.2f}"
        shared = (steps * m, ours, note, cfg.t1)
        rows.append(flowgap_row(bar, rtol, ladder[rtol], ours, cfg.t1))
        rows.append(
            euler_row(
                "reference algorithm",
                f"Euler m {m:.0f} (dt {LR / m:.2g})",
                ref.err_run if measured else bar,
                per_substep["reference"] * steps * m,
                *shared,
            )
        )
        rows.append(
            euler_row(
                "info: the same, QP in JAX",
                "closed form, no callback",
                inline_err if measured else bar,
                per_substep["inline"] * steps * m,
                *shared,
            )
        )
    return rows


def equal_accuracy_section(truth, ref, ladder, chosen, timer, emit) -> None:
    """Run the info row, time the table's programs in interleaved rounds, and
    print the equal-accuracy table with compile seconds and the host QP's share."""
    cfg, steps, m_run = truth.cfg, truth.steps, ref.m_run
    inline, inline_err, inline_compile = info_run(truth, m_run, timer)
    times = warm_rounds(truth, ref, inline, chosen, timer)
    per_substep = {
        name: times[key] / (steps * m_run)
        for name, key in (("reference", f"reference {m_run}"), ("inline", "inline"))
    }
    rows = accuracy_rows(truth, ref, ladder, chosen, times, per_substep, inline_err)
    _, _, calls, solves, host_seconds = ref.rungs[-1]
    headers = ("bar", "method", "setting", "error", "steps", "grad evals")
    headers += ("ms per unit t", "vs flowgap", "note")
    emit(
        "",
        "Equal accuracy: error = ||theta(t1) - truth|| / ||truth||. Bars: the "
        f"reference's error at its largest m run, and the target {cfg.target:g}; "
        "flowgap at the loosest rtol within the bar. ms per unit t: warm, without "
        "compilation",
        table(headers, rows),
        f"compile s (trace + lower + XLA): flowgap {truth.compile_seconds:.1f}, "
        f"reference algorithm {ref.compile_seconds:.1f}, info row "
        f"{inline_compile:.1f}. Reference at m {m_run}: "
        f"{per_substep['reference'] * 1e3:.2f} ms per substep, "
        f"{host_seconds / calls * 1e3:.2f} ms of it in the host QP ({calls} calls, "
        f"{solves} solver runs where C is not PSD); with the QP in JAX "
        f"{per_substep['inline'] * 1e3:.2f} ms per substep. XLA compiles inside "
        f"timed calls: {timer.compiles}",
    )


def ladders_section(truth, ref, ladder, timer, emit) -> None:
    """Print both ladders: each rung's error and best warm seconds."""
    best = timer.best
    reference_rows = [
        ("reference", f"m {m}", f"{err:.2e}", truth.steps * m)
        + (f"{best[f'reference {m}']:.3f}",)
        for m, err, *_ in ref.rungs
    ]
    flowgap_rows = [
        ("flowgap", f"rtol {r:g}", f"{err:.2e}", n, f"{best[f'flowgap {r:g}']:.3f}")
        for r, (err, n, _) in ladder.items()
    ]
    emit(
        "",
        "Ladders (error vs truth; warm seconds per solve, the minimum of its samples)",
        table(
            ("method", "setting", "error", "steps", "s per solve"),
            reference_rows + flowgap_rows,
        ),
    )


def run(cfg: Config) -> None:
    """Every section in turn, printed as it completes; a full run appends the
    printed tables to RESULTS.md."""
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info)
    lines = []

    def emit(*new):
        print(*new, sep="\n", flush=True)
        lines.extend(new)

    truth = truth_section(cfg, emit)
    timer = Timer(cfg)
    ref = reference_section(truth, timer)
    ladder, chosen = flowgap_section(truth, ref.bars(cfg.target), timer)
    equal_accuracy_section(truth, ref, ladder, chosen, timer, emit)
    ladders_section(truth, ref, ladder, timer, emit)
    batch_section(truth, chosen["target"], emit)
    vmap_attempt_section(truth, ref.qp, emit)

    load1 = os.getloadavg()[0]
    wall = time.perf_counter() - start
    print(f"load average (1 min) at start / end: {load0:.2f} / {load1:.2f}")
    print(f"total {wall:.0f} s")
    if not cfg.quick:
        append_results(
            f"{info}; command: `.venv/bin/python benchmarks/bench_central.py`",
            "\n".join(lines),
            wall,
            (load0, load1),
            "bench_central.py",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short, no RESULTS.md")
    run(QUICK if parser.parse_args().quick else FULL)


if __name__ == "__main__":
    main()
