"""Sweep benchmark: the per-run cost of one compiled sweep against one run alone,
with the runs in lock-step (one vmap) or in sequential vmapped groups
(`batch_size`), and the same sweep on 1 vs 4 devices.

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
   - "alone": `jax.jit(point)` called on each of the sweep's 256 points in turn
     (compiled once; each call's dispatch included), divided by 256.
   - "sweep": `flowgap.sweep(point, grid, batch_size=b)` over a 16 x 16 grid of
     (scale, lr) (GF: 256 scales), one chunk of 256 runs, compiled once, then
     timed; the result's host transfer is included. b = "all": one vmap of 256
     runs in lock-step (the GPU/TPU default); b = 1 (the CPU default,
     `default_batch_size("cpu")`): `lax.map` of the solo program over the runs.
   - ratio = (t_sweep / 256) / t_alone. Targets on CPU: GD <= 1/10 (vmap's
     aim); GF <= 1 in the backend's default mode.
   The grid shares the problem, so vmapping turns the runs' mat-vecs into
   mat-mats; vmapped GF runs step together until the slowest run of their group
   is done. vmap removes per-step overhead, never flops: where one run is
   flop-bound the ratio cannot approach 1/256, and b = 1 saves only the solo
   calls' dispatch.
2. Group size. The ratio of the two extreme cases (GF 40 x 200: adaptive and
   flop-bound; GD 10 x 20: fixed steps and overhead-bound) for b = 1, 4, 16,
   64, "all" (b >= 2: `lax.map` over vmapped groups of b): what the CPU
   default is chosen from.
3. Devices. The GD sweep (default `batch_size`) in child processes with
   `XLA_FLAGS=--xla_force_host_platform_device_count=N`, N = 1 and 4 (CPU only):
   wall time of the compiled sweep and the largest relative difference of the
   final losses between N = 4 and N = 1 (expected: 0 with b = 1, every run
   being the solo program; round-off with vmapped groups of other sizes).

Timing: every callable of one table row is called once to compile and warm up,
then the rows' callables are called in turn, `rounds` times (interleaved, so a
burst of load from other processes hits them alike); each keeps its minimum.
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
        return dict(
            loss=traj.final_loss,
            error=error,
            status=flowgap.dynamics.status_code(traj.result),
        )

    def gf_point(scale):
        traj = flowgap.gradient_flow(
            problem.loss, models.DiagonalNet(d, scale=scale), t1=10.0
        )
        error = jnp.linalg.norm(traj.final.end_to_end() - problem.truth)
        return dict(
            loss=traj.final_loss,
            error=error,
            status=flowgap.dynamics.status_code(traj.result),
        )

    grid = {"scale": np.geomspace(1e-3, 1.0, 16), "lr": np.geomspace(1e-3, 2e-2, 16)}
    return gd_point, gf_point, grid


def best(fn, rounds: int) -> float:
    """Minimum seconds of `rounds` calls of `fn` after a warm-up call."""
    return interleaved({"fn": fn}, rounds)["fn"]


def interleaved(fns: dict, rounds: int) -> dict:
    """Minimum seconds per call of each callable of `fns`, called in turn."""
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())
    times = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name] = min(times[name], time.perf_counter() - start)
    return times


MAIN = ("all", 1)  # lock-step; the CPU default (each run alone)
SCAN = (4, 16, 64)  # only for the two extreme cases
EXTREMES = (("GF", "40x200"), ("GD", "10x20"))


def per_run(steps: int, rounds: int, n: int, d: int) -> list:
    """Rows `(trainer, n x d, steps, t_alone, {batch_size: t_sweep})`."""
    import jax

    from flowgap import sweep

    gd_point, gf_point, grid = setup(steps, n, d)
    mesh = np.meshgrid(*grid.values(), indexing="ij")
    scales = {"scale": np.geomspace(1e-3, 1.0, 256)}
    cases = (  # (trainer, steps, point, grid, its 256 runs as {axis: values})
        ("GD", steps, gd_point, grid, {k: v.ravel() for k, v in zip(grid, mesh)}),
        ("GF", "t1=10", gf_point, scales, scales),
    )
    rows = []
    for name, k, point, sweep_grid, runs in cases:
        alone = jax.jit(point)
        solo = list(zip(*runs.values()))  # the same 256 runs, one call each

        def loop(alone=alone, solo=solo):
            return [alone(*args) for args in solo]

        sizes = MAIN + (SCAN if (name, f"{n}x{d}") in EXTREMES else ())
        fns = {"alone": loop}
        for b in sizes:
            fns[b] = lambda b=b, point=point, sweep_grid=sweep_grid: (
                sweep(point, sweep_grid, batch_size=b, progress=False).values
            )
        times = interleaved(fns, rounds)
        sweeps = {b: times[b] for b in sizes}
        rows.append((name, f"{n}x{d}", k, times["alone"] / 256, sweeps))
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


TARGETS = {"GD": 0.1, "GF": 1.0}


def per_run_tables(steps: int, rounds: int) -> list:
    """The per-run cost table (both modes) and the group-size table."""
    from flowgap.sweeps import default_batch_size

    rows = [r for n, d in ((10, 20), (40, 200)) for r in per_run(steps, rounds, n, d)]
    default = default_batch_size()
    lines = [
        "Per-run cost of a 256-run sweep vs one run alone, ratio = (sweep / 256) "
        f"/ alone (min of {rounds} interleaved calls)",
        "vmap: batch_size='all' (lock-step); b=1: each run alone in one compiled "
        f"loop (CPU default); default here: {default!r}; targets on the default: "
        "GD <= 0.1, GF <= 1",
        f"{'trainer':<7} {'n x d':>6} {'steps':>6} {'alone (ms)':>10} "
        f"{'vmap (ms)':>10} {'ratio':>7} {'b=1 (ms)':>10} {'ratio':>7}  verdict",
    ]
    for name, size, k, t_alone, sweeps in rows:
        ratio = {b: t / 256 / t_alone for b, t in sweeps.items()}
        verdict = "PASS" if ratio[default] <= TARGETS[name] else "MISS"
        lines.append(
            f"{name:<7} {size:>6} {k!s:>6} {1e3 * t_alone:>10.3f} "
            f"{1e3 * sweeps['all']:>10.1f} {ratio['all']:>7.3f} "
            f"{1e3 * sweeps[1]:>10.1f} {ratio[1]:>7.3f}  {verdict}"
        )
    sizes = (*sorted(MAIN[1:] + SCAN), "all")
    lines += [
        "",
        "Per-run ratio by batch_size b, the two extreme cases",
        f"{'trainer':<7} {'n x d':>6} " + " ".join(f"{f'b={b}':>7}" for b in sizes),
    ]
    for name, size, _, t_alone, sweeps in rows:
        if (name, size) in EXTREMES:
            cells = " ".join(f"{sweeps[b] / 256 / t_alone:>7.3f}" for b in sizes)
            lines.append(f"{name:<7} {size:>6} {cells}")
    return lines


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
    lines = per_run_tables(steps, rounds)
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
