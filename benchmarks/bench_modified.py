"""Cost of the modified flows against a plain gradient-flow solve (float64, CPU).

Run: `.venv/bin/python benchmarks/bench_modified.py [--no-record]`. Same problem,
horizon, solver (Dopri8) and tolerances for every row: sparse recovery 40 x 200,
depth-2 `DiagonalNet` from init 0.1, t1 = 20, rtol 1e-8, atol 1e-10, lr 0.01 for
the modified flows. Each order-1 evaluation adds one Hessian-vector product (a jvp
of the gradient) to the gradient; order 2 adds two more jvps. The ratio is
t(modified) / t(gradient_flow), target <= 3 for order 1; the minimum over
interleaved rounds (helpers from bench_core.py). Appends to RESULTS.md.
"""

import argparse
import dataclasses
import datetime
import os
import time

import diffrax
import jax

jax.config.update("jax_enable_x64", True)

from bench_core import FULL, RESULTS, machine_info, table, time_interleaved  # noqa: E402

import flowgap  # noqa: E402
from flowgap import models, problems  # noqa: E402
from flowgap.dynamics import modified_flow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="do not append")
    args = parser.parse_args()
    start = time.perf_counter()
    prob = problems.sparse_recovery(jax.random.key(0), n=40, d=200, sparsity=5)
    net = models.DiagonalNet(200, scale=0.1)
    common = dict(t1=20.0, solver=diffrax.Dopri8(), rtol=1e-8, atol=1e-10)

    def plain():
        return flowgap.gradient_flow(prob.loss, net, **common)

    def order(k):
        return lambda: modified_flow(prob.loss, net, lr=0.01, order=k, **common)

    runs = {
        "gradient_flow": plain,
        "modified_flow order 1": order(1),
        "modified_flow order 2": order(2),
    }
    best = time_interleaved(
        {k: (lambda f=f: jax.block_until_ready(f())) for k, f in runs.items()},
        dataclasses.replace(FULL, rounds=5, min_sample=0.3),
    )
    rows = []
    for name, fn in runs.items():
        traj = fn()
        rows.append(
            (
                name,
                f"{best[name] * 1e3:.2f}",
                int(traj.stats["num_steps"]),
                int(traj.stats["num_grad_evals"]),
                f"{best[name] / best['gradient_flow']:.2f}",
            )
        )
    ratio = best["modified_flow order 1"] / best["gradient_flow"]
    body = table(("flow", "ms/solve", "steps", "field evals", "vs gradient_flow"), rows)
    body += (
        f"\n\ntarget: order-1 modified flow / gradient_flow <= 3: {ratio:.2f}x "
        f"{'PASS' if ratio <= 3 else 'MISS'}"
    )
    info = machine_info()
    print(info)
    print(body)
    if not args.no_record:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        wall = time.perf_counter() - start
        with RESULTS.open("a") as f:
            f.write(
                f"\n## bench_modified.py, {stamp}\n\n- {info}\n- load average "
                f"{os.getloadavg()[0]:.2f}; run time {wall:.0f} s"
                f"\n\n```text\n{body}\n```\n"
            )


if __name__ == "__main__":
    main()
