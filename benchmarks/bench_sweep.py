"""Sweep benchmark: the per-run cost of one vmapped, compiled sweep against one
run alone, and the same sweep on 1 vs 4 devices.

Run: `.venv/bin/python benchmarks/bench_sweep.py [--quick]`. A full run prints
the tables and appends them, with the date and machine, to
`benchmarks/RESULTS.md`; `--quick` only prints. Works on CPU and GPU (JAX's
default backend).

Problem: `problems.sparse_recovery(key(0), n, d, sparsity=min(5, d/4))` at
n x d = 10 x 20 (a toy-theory size, where one run is overhead-bound) and
40 x 200 (where one run's mat-vecs already run near the machine's rate), depth-2
`DiagonalNet`, float64.

1. Per-run cost. One run = `point(scale, lr)`: GD for `steps` steps (a save
   only at the end) returning final loss, recovery error and status; or GF to
   t1 = 10 (Tsit5, rtol 1e-8, atol 1e-10) from init `scale`.
   - "alone": `jax.jit(point)` on scalars (compiled once, then timed), the mean
     over 4 init scales spread over the grid (GF's cost depends on the scale).
   - "sweep": `flowgap.sweep(point, grid)` over a 16 x 16 grid of (scale, lr)
     (GF: 256 scales), one chunk of 256 runs, compiled once, then timed; the
     result's host transfer is included.
   - ratio = (t_sweep / 256) / t_alone; target <= 1/10 for GD on CPU.
   The grid shares the problem, so vmapping turns the runs' mat-vecs into
   mat-mats; vmapped GF runs step together until the slowest run is done.
   vmap removes per-step overhead, never flops: where one run is flop-bound the
   ratio cannot approach 1/256.
2. Devices. The GD sweep in child processes with
   `XLA_FLAGS=--xla_force_host_platform_device_count=N`, N = 1 and 4 (CPU only):
   wall time of the compiled sweep and the largest relative difference of the
   final losses between N = 4 and N = 1 (expected: round-off only).

Timing: the minimum over `rounds` calls after a warm-up call.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")


def setup(steps: int, n: int = 40, d: int = 200):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import flowgap
    from flowgap import models, problems

    problem = problems.sparse_recovery(
        jax.random.key(0), n=n, d=d, sparsity=min(5, d // 4)
    )

    def gd_point(scale, lr):
        traj = flowgap.gradient_descent(
            problem.loss,
            models.DiagonalNet(d, scale=scale),
            lr=lr,
            steps=steps,
            save_every=steps,
        )
        error = jnp.linalg.norm(traj.final.end_to_end() - problem.truth)
        return dict(loss=traj.final_loss, error=error, status=traj.result._value)

    def gf_point(scale):
        traj = flowgap.gradient_flow(
            problem.loss, models.DiagonalNet(d, scale=scale), t1=10.0
        )
        error = jnp.linalg.norm(traj.final.end_to_end() - problem.truth)
        return dict(loss=traj.final_loss, error=error, status=traj.result._value)

    grid = {"scale": np.geomspace(1e-3, 1.0, 16), "lr": np.geomspace(1e-3, 2e-2, 16)}
    return gd_point, gf_point, grid


def best(fn, rounds: int) -> float:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def per_run(steps: int, rounds: int, n: int, d: int) -> list:
    import jax

    from flowgap import sweep

    gd_point, gf_point, grid = setup(steps, n, d)
    picks = np.linspace(0, 15, 4).astype(int)  # 4 scales spread over the grid
    rows = []
    alone = jax.jit(gd_point)
    t_alone = np.mean(
        [best(lambda s=s: alone(s, 0.01), rounds) for s in grid["scale"][picks]]
    )
    t_sweep = best(lambda: sweep(gd_point, grid, progress=False).values, rounds)
    rows.append(("GD", f"{n}x{d}", steps, t_alone, t_sweep))
    alone = jax.jit(gf_point)
    t_alone = np.mean(
        [best(lambda s=s: alone(s), rounds) for s in grid["scale"][picks]]
    )
    scales = {"scale": np.geomspace(1e-3, 1.0, 256)}
    t_sweep = best(lambda: sweep(gf_point, scales, progress=False).values, rounds)
    rows.append(("GF", f"{n}x{d}", "t1=10", t_alone, t_sweep))
    return rows


def child(steps: int, rounds: int) -> None:
    """Run in a fresh process: time the GD sweep on this process's devices."""
    import jax

    from flowgap import sweep

    gd_point, _, grid = setup(steps)
    t = best(lambda: sweep(gd_point, grid, progress=False).values, rounds)
    loss = sweep(gd_point, grid, progress=False).values["loss"]
    print(json.dumps(dict(devices=len(jax.devices()), seconds=t, loss=loss.tolist())))


def devices(steps: int, rounds: int) -> list:
    out = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        env["JAX_PLATFORMS"] = "cpu"
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(steps), str(rounds)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
    one, four = np.asarray(out[1]["loss"]), np.asarray(out[4]["loss"])
    diff = float(np.max(np.abs(four - one) / np.abs(one)))
    return [(n, out[n]["devices"], out[n]["seconds"]) for n in (1, 4)], diff


def machine() -> str:
    import jax

    device = jax.devices()[0]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    pkgs = ", ".join(
        f"{p} {version(p)}" for p in ("jax", "jaxlib", "equinox", "diffrax")
    )
    return (
        f"device: {device.platform} ({device.device_kind}); CPU: {cpu}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}; {pkgs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test, no RESULTS.md"
    )
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    steps, rounds = (200, 2) if args.quick else (2000, 5)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine()
    print(info)
    lines = [
        "Per-run cost: 256-run vmapped sweep vs one run alone (min of "
        f"{rounds} timed calls)",
        f"{'trainer':<8} {'n x d':>7} {'steps':>7} {'alone (ms)':>11} "
        f"{'sweep (ms)':>11} {'sweep/run (ms)':>15} {'per-run ratio':>14}  "
        "target <= 0.1",
    ]
    for n, d in ((10, 20), (40, 200)):
        for name, size, k, t_alone, t_sweep in per_run(steps, rounds, n, d):
            ratio = t_sweep / 256 / t_alone
            verdict = "PASS" if ratio <= 0.1 else "MISS"
            lines.append(
                f"{name:<8} {size:>7} {k!s:>7} {1e3 * t_alone:>11.3f} "
                f"{1e3 * t_sweep:>11.1f} {1e3 * t_sweep / 256:>15.4f} "
                f"{ratio:>14.4f}  {verdict}"
            )
    import jax

    if jax.default_backend() == "cpu":
        rows, diff = devices(steps, rounds)
        lines += [
            "",
            "GD sweep of 256 runs on N forced CPU devices (child processes)",
            f"{'N':>3} {'devices seen':>13} {'sweep (ms)':>11} {'vs N=1':>8}",
        ]
        for n, seen, seconds in rows:
            lines.append(
                f"{n:>3} {seen:>13} {1e3 * seconds:>11.1f} {seconds / rows[0][2]:>8.3f}"
            )
        lines.append(f"max relative difference of final losses, N=4 vs N=1: {diff:.1e}")
    body = "\n".join(lines)
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print(body)
    print(f"\ntotal {wall:.0f} s; load average (1 min) {load0:.2f} / {load1:.2f}")
    if not args.quick:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(
                f"\n## bench_sweep.py, {stamp}\n\n- {info}\n"
                f"- Load average (1 min) at start / end: {load0:.2f} / {load1:.2f}; "
                f"total run time {wall:.0f} s\n\n```text\n{body}\n```\n"
            )
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
