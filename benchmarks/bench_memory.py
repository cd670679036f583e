"""Peak memory of reverse-mode differentiation through gradient descent (float64).

Run: `.venv/bin/python benchmarks/bench_memory.py [--no-record]`. Prints a table
and appends it, with the date and machine, to `benchmarks/RESULTS.md` (unless
`--no-record`; `tests/test_differentiable.py`'s slow test uses that).

What is measured: `jax.grad` of the final loss of `flowgap.gradient_descent`
w.r.t. the init scale α, on `problems.sparse_recovery(key(0), n=20, d=1000,
sparsity=3)` with a depth-2 `DiagonalNet` (2,000 parameters), lr 1e-3, saving
only the start and the end. Each measurement runs in its own child process
(`--child MODE STEPS`) and reports `resource.getrusage(RUSAGE_SELF).ru_maxrss`
(peak resident set size; it includes the interpreter, JAX and the compiled
program, ~0.4 GB on its own, the same for every row) and the wall time of one
call (compilation included). MB = 2^20 bytes.

- `flowgap`: the trainer as shipped: its loops run in ⌈√K⌉ `jax.checkpoint`-ed
  blocks (`flowgap.dynamics._descent_loop.scan_steps`), so reverse mode stores
  O(√K) states.
- `plain scan`: the same steps as one hand-written `lax.scan` (no
  checkpointing), whose reverse mode stores every step's residuals: O(K). Run at
  10^3 and 10^4 steps only (10^5 would need several GB).

The claim checked: flowgap's peak grows by less than 2x from 10^4 to 10^5 steps.

Second table (in this process): accuracy of the unrolled gradient-flow
derivative against the horizon. For a depth-2 `DiagonalNet` from α = 0.5 on
`sparse_recovery(key(0), n=5, d=10, sparsity=2)`, `jax.grad` (default
`RecursiveCheckpointAdjoint`, Tsit5, atol = rtol/100) of ⟨β(T), r⟩ with
r = dβ_∞/dα from `analysis.woodworth_limit_derivative` (the implicit-function
derivative of the limit, exact to ~1e-13), reported as |⟨dβ(T)/dα, r⟩ − ‖r‖²| /
‖r‖²: the flow converges by T ≈ 40, so for larger T the distance is the error
the unrolled derivative accumulates while integrating idle time. The last rows
stop the flow by the event L < 1e-24 instead (`stop_when=LossBelow(1e-24)`,
t1 = 1e5 as a cap).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
N, D, LR, SCALE = 20, 1000, 1e-3, 0.1
RUNS = (
    ("flowgap", 10**3),
    ("flowgap", 10**4),
    ("flowgap", 10**5),
    ("plain scan", 10**3),
    ("plain scan", 10**4),
)


def child(mode: str, steps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax

    import flowgap
    from flowgap import models, problems

    problem = problems.sparse_recovery(jax.random.key(0), n=N, d=D, sparsity=3)

    def flowgap_loss(scale):
        model = models.DiagonalNet(D, scale=scale)
        return flowgap.gradient_descent(
            problem.loss, model, lr=LR, steps=steps, save_every=steps
        ).final_loss

    def plain_loss(scale):
        params = models.DiagonalNet(D, scale=scale)

        def step(model, _):
            grads = jax.grad(problem.loss)(model)
            return jax.tree.map(lambda p, g: p - LR * g, model, grads), None

        return problem.loss(lax.scan(step, params, None, length=steps)[0])

    fn = flowgap_loss if mode == "flowgap" else plain_loss
    start = time.perf_counter()
    grad = jax.block_until_ready(jax.jit(jax.grad(fn))(jnp.asarray(SCALE)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB
    return dict(mode=mode, steps=steps, peak_mb=peak, seconds=seconds, grad=float(grad))


def gradient_accuracy() -> str:
    import jax

    jax.config.update("jax_enable_x64", True)
    from flowgap import analysis, dynamics, models, problems

    problem = problems.sparse_recovery(jax.random.key(0), n=5, d=10, sparsity=2)
    ref = analysis.woodworth_limit_derivative(problem.inputs, problem.targets, 0.5)[1]
    norm2 = float(ref @ ref)
    head = (
        f"{'rtol':>6} {'horizon':>16} {'stop time':>10} {'solver steps':>12} "
        f"{'rel error':>10}"
    )
    lines = [
        "Unrolled GF derivative d<beta(T), r>/dalpha vs the implicit one (alpha 0.5)",
        head,
        "-" * len(head),
    ]
    for rtol in (1e-8, 1e-12):
        for t1 in (1e2, 1e3, 1e4, 1e5, None):
            stop = None if t1 else dynamics.LossBelow(1e-24)

            def run(alpha, rtol=rtol, t1=t1, stop=stop):
                return dynamics.gradient_flow(
                    problem.loss,
                    models.DiagonalNet(10, scale=alpha),
                    t1=t1 or 1e5,
                    rtol=rtol,
                    atol=rtol / 100,
                    max_steps=10**6,
                    stop_when=stop,
                )

            grad = jax.grad(lambda a: run(a).final.end_to_end() @ ref)(0.5)
            traj = run(0.5)
            label = f"T = {t1:g}" if t1 else "event L < 1e-24"
            lines.append(
                f"{rtol:>6g} {label:>16} {float(traj.stop_time):>10.4g} "
                f"{int(traj.stats['num_steps']):>12d} "
                f"{abs(float(grad) - norm2) / norm2:>10.2e}"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def measure(mode: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(steps)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine_info() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    pkgs = ["jax", "jaxlib", "equinox", "diffrax"]
    return (
        f"CPU: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
    )


def report(rows) -> str:
    head = f"{'implementation':<12} {'steps':>7} {'peak RSS (MB)':>14} {'time (s)':>9}"
    lines = [
        "Reverse mode (jax.grad of the final loss w.r.t. alpha) through GD, "
        f"n x d = {N} x {D}",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r['mode']:<12} {r['steps']:>7d} {r['peak_mb']:>14.0f} "
            f"{r['seconds']:>9.2f}"
        )
    peak = {(r["mode"], r["steps"]): r["peak_mb"] for r in rows}
    growth = peak[("flowgap", 10**5)] / peak[("flowgap", 10**4)]
    lines.append(
        f"flowgap peak growth 1e4 -> 1e5: {growth:.3f}x (target < 2x: "
        f"{'PASS' if growth < 2 else 'MISS'})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print only; do not append to RESULTS.md",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="skip the accuracy table"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    load0, start = os.getloadavg()[0], time.perf_counter()
    info = machine_info()
    print(info)
    rows = []
    for mode, steps in RUNS:
        rows.append(measure(mode, steps))
        print(rows[-1], flush=True)
    body = report(rows)
    print(body)
    if not args.memory_only:
        body += "\n\n" + gradient_accuracy()
        print(body.split("\n\n")[-1])
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    if not args.no_record:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(
                f"\n## bench_memory.py, {stamp}\n\n- {info}\n"
                f"- Load average (1 min) at start / end: {load0:.2f} / {load1:.2f}; "
                f"total run time {wall:.0f} s\n\n```text\n{body}\n```\n"
            )
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
