"""Run the reference sweep in a fresh process, so that the device count
(`XLA_FLAGS`) and `jax.distributed` can be set before JAX starts, and save it.

    python tests/sweep_worker.py OUT [--devices N] [--chunk-size C]
        [--process-id I --num-processes P --port PORT]
"""

import argparse
import os


def run(scale, lr, seed):
    import jax
    import jax.numpy as jnp

    import flowgap
    from flowgap.models import DiagonalNet
    from flowgap.problems import sparse_recovery

    problem = sparse_recovery(jax.random.key(seed), n=10, d=20, sparsity=2)
    traj = flowgap.gradient_descent(
        problem.loss, DiagonalNet(20, scale=scale), lr=lr, steps=200, save_every=50
    )
    return dict(
        loss=traj.final_loss,
        error=jnp.linalg.norm(traj.final.end_to_end() - problem.truth),
        status=flowgap.dynamics.status_code(traj.result),
    )


# lr = 2.0 diverges for every scale and seed; the others converge
GRID = {"scale": [0.01, 0.1, 1.0], "lr": [0.01, 0.05, 2.0], "seed": [0, 1, 2]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"  # forced host devices, also beside a GPU
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}", args.num_processes, args.process_id
        )
    from flowgap.sweeps import sweep

    assert len(jax.devices()) == args.devices * args.num_processes
    result = sweep(run, GRID, chunk_size=args.chunk_size, progress=False)
    result.save(f"{args.out}.{args.process_id}.npz")
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
