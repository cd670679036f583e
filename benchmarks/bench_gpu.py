"""GPU benchmark: achieved FLOP/s of a batched GD sweep against the device's
measured matmul rate, in one run.

Run (on a machine with a GPU): `python benchmarks/bench_gpu.py [--quick]`. Prints
the table; `--append` also appends it to `benchmarks/RESULTS.md`.

The sweep: `flowgap.sweep` of depth-2 `DiagonalNet` GD runs on one shared
sparse-recovery problem X (n x d), over a grid of B = |scales| x |lrs| runs.
Per GD step and run the trainer computes r = X beta - y and X^T r (2nd flops
each) and O(d) elementwise work, so a step of the batch is two (n x d) x (d x B)
matrix products: 4ndB flops (elementwise work not counted). Achieved FLOP/s =
4ndB * steps / t_sweep, with t_sweep the best of `rounds` calls of the compiled
sweep (compilation excluded, host transfer of the small results included).

The reference rate: the best of `rounds` timings of `X @ W` with W (d x B), in
the same dtype and at matmul precision "highest" (flowgap's setting for float32:
no TF32), measured in the same process. Target: >= 50% of it on a large sweep.
"""

import argparse
import datetime
import os
from pathlib import Path

import numpy as np
from bench_sweep import best  # the same min-of-rounds timer

RESULTS = Path(__file__).with_name("RESULTS.md")


def measure(dtype: str, n: int, d: int, side: int, steps: int, rounds: int):
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")
    import flowgap
    from flowgap import models, problems

    problem = problems.sparse_recovery(jax.random.key(0), n=n, d=d, sparsity=10)
    runs = side * side

    def point(scale, lr):
        traj = flowgap.gradient_descent(
            problem.loss,
            models.DiagonalNet(d, scale=scale),
            lr=lr,
            steps=steps,
            save_every=steps,
        )
        return dict(loss=traj.final_loss, status=traj.result._value)

    grid = {
        "scale": np.geomspace(1e-3, 1e-1, side),
        "lr": np.geomspace(1e-4, 1e-3, side),
    }
    t_sweep = best(
        lambda: flowgap.sweep(point, grid, progress=False).values["loss"], rounds
    )
    result = flowgap.sweep(point, grid, progress=False)
    ok = int(np.sum(result.values["status"] == 0))
    x = problem.inputs
    w = jax.random.normal(jax.random.key(1), (d, runs), dtype=x.dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    reps = 20

    def chain(a, b):
        # each product's operand depends on the loop, so XLA cannot hoist it
        def body(i, carry):
            acc, b = carry
            return acc + a @ b, b + 1e-9

        return jax.lax.fori_loop(0, reps, body, (a @ b, b))[0]

    repeated = jax.jit(chain)
    t_mm = best(lambda: repeated(x, w), rounds) / (reps + 1)  # incl. the adds
    t_single = best(lambda: matmul(x, w), rounds)
    peak = 2 * n * d * runs / t_mm
    achieved = 4 * n * d * runs * steps / t_sweep
    return dict(
        dtype=dtype,
        size=f"{n}x{d}",
        runs=runs,
        steps=steps,
        t_sweep=t_sweep,
        achieved=achieved,
        peak=peak,
        single=2 * n * d * runs / t_single,
        ok=ok,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    import jax

    device = jax.devices()[0]
    info = f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}"
    print(info, flush=True)
    configs = (
        [("float32", 512, 512, 8, 20)]
        if args.quick
        else [
            ("float32", 4096, 4096, 32, 50),
            ("float32", 8192, 8192, 32, 20),
            ("float64", 4096, 4096, 32, 20),
        ]
    )
    lines = [
        f"{'dtype':<8} {'n x d':>10} {'runs':>5} {'steps':>5} {'sweep (s)':>10} "
        f"{'TFLOP/s':>8} {'matmul TFLOP/s':>15} {'of matmul':>9}  target >= 50%",
    ]
    for dtype, n, d, side, steps in configs:
        r = measure(dtype, n, d, side, steps, rounds=3)
        share = r["achieved"] / r["peak"]
        lines.append(
            f"{r['dtype']:<8} {r['size']:>10} {r['runs']:>5} {r['steps']:>5} "
            f"{r['t_sweep']:>10.4f} {r['achieved'] / 1e12:>8.2f} "
            f"{r['peak'] / 1e12:>15.2f} {share:>9.1%}  "
            f"{'PASS' if share >= 0.5 else 'MISS'} ({r['ok']}/{r['runs']} runs ok)"
        )
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    print()
    print(body)
    if args.append:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(
                f"\n## bench_gpu.py, {stamp}\n\n- {info}; {os.cpu_count()} CPU cores"
                f"\n\n```text\n{body}\n```\n"
            )


if __name__ == "__main__":
    main()
