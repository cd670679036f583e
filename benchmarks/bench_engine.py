"""The flow engine's overhead: `flowgap.gradient_flow` against a hand-written
`diffrax.diffeqsolve` of the same ODE.

Run: `.venv/bin/python benchmarks/bench_engine.py [--quick]`. A full run prints
the table and appends it, with the machine and load, to `benchmarks/RESULTS.md`;
`--quick` (shorter horizons) only prints.

Cases (float64, Tsit5, PID control with pcoeff = icoeff = 0.3 on both sides, 101
saves, equal rtol/atol):
1. plateau: sparse recovery 40 × 200 (`problems.sparse_recovery(key(0))`), depth-2
   `DiagonalNet` from init 1e-6, rtol = atol = 1e-9, t1 = 10⁴ (10³ quick): two
   parameter leaves (u, v);
2. mlp-20: `eqx.nn.MLP(8 → 16, depth 9, tanh)` on a 64-point teacher regression
   (half mean squared error), 20 parameter leaves, rtol 1e-8, atol 1e-10, t1 = 50
   (10 quick).

Implementations: flowgap (the engine: one flat vector of the trainable leaves);
"hand pytree" (what a user writes: `diffeqsolve` on the model's parameter pytree,
`SaveAt(ts=ts)`); "hand flat" (the same with `jax.flatten_util.ravel_pytree`,
for reference). flowgap also evaluates L at every save and at the end, which the
hand-written solves do not.

Ratio: t(flowgap) / t(hand pytree), target ≤ 1.15. Timing: bench_core's
`time_interleaved` (warm-up call, then interleaved rounds; minimum over rounds).
"""

import argparse
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from bench_core import append_results, problem, table, time_interleaved
from jax.flatten_util import ravel_pytree

import flowgap

jax.config.update("jax_enable_x64", True)

SOLVER = diffrax.Tsit5()
SAVES = 101
TARGET = 1.15


@dataclass(frozen=True)
class Config:
    quick: bool
    plateau_t1: float
    mlp_t1: float
    min_sample: float
    rounds: int


FULL = Config(False, 1e4, 50.0, 1.0, 5)
QUICK = Config(True, 1e3, 10.0, 0.1, 3)


def controller(rtol, atol):
    return diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.3)


def hand_solve(loss, params, static, t1, ts, rtol, atol, flat: bool):
    """`diffeqsolve` of dθ/dt = −∇L on the parameter pytree, or on its ravel."""
    if flat:
        y0, unravel = ravel_pytree(params)
    else:
        y0, unravel = params, lambda y: y

    def value(y):
        return loss(eqx.combine(unravel(y), static))

    def field(t, y, args):
        return jax.tree.map(jnp.negative, jax.grad(value)(y))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        SOLVER,
        t0=0.0,
        t1=t1,
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller(rtol, atol),
        max_steps=10**6,
    )
    return sol.ys, sol.stats["num_steps"]


def mlp_case():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    net = eqx.nn.MLP(8, 1, 16, 9, activation=jnp.tanh, key=k1)
    teacher = eqx.nn.MLP(8, 1, 8, 1, activation=jnp.tanh, key=k2)
    x = jax.random.normal(k3, (64, 8))
    y = jax.vmap(teacher)(x)

    class Regression(eqx.Module):
        inputs: jax.Array
        targets: jax.Array

        def loss(self, model):
            return 0.5 * jnp.mean((jax.vmap(model)(self.inputs) - self.targets) ** 2)

    return Regression(x, y).loss, net


def bench_case(name, loss, model, t1, rtol, atol, cfg):
    ts = jnp.linspace(0.0, t1, SAVES)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @eqx.filter_jit
    def ours(loss, model):
        traj = flowgap.gradient_flow(
            loss,
            model,
            t1=t1,
            ts=ts,
            solver=SOLVER,
            rtol=rtol,
            atol=atol,
            max_steps=10**6,
        )
        return traj.final, traj.stats["num_steps"]

    hands = {
        flat: eqx.filter_jit(
            lambda loss, params, flat=flat: hand_solve(
                loss, params, static, t1, ts, rtol, atol, flat
            )
        )
        for flat in (False, True)
    }
    times = time_interleaved(
        {
            "flowgap": lambda: jax.block_until_ready(ours(loss, model)),
            "hand pytree": lambda: jax.block_until_ready(hands[False](loss, params)),
            "hand flat": lambda: jax.block_until_ready(hands[True](loss, params)),
        },
        cfg,
    )
    final, steps = ours(loss, model)
    ys, hand_steps = hands[False](loss, params)
    ours_flat = ravel_pytree(eqx.filter(final, eqx.is_inexact_array))[0]
    hand_flat = ravel_pytree(jax.tree.map(lambda y: y[-1], ys))[0]
    agree = float(jnp.linalg.norm(ours_flat - hand_flat) / jnp.linalg.norm(hand_flat))
    leaves = len(jax.tree.leaves(params))
    ratio = times["flowgap"] / times["hand pytree"]
    return (
        name,
        leaves,
        f"{times['flowgap'] * 1e3:.1f}",
        f"{times['hand pytree'] * 1e3:.1f}",
        f"{times['hand flat'] * 1e3:.1f}",
        f"{int(steps)}/{int(hand_steps)}",
        f"{ratio:.2f}x",
        f"{agree:.1e}",
        "PASS" if ratio <= TARGET else "MISS",
    )


def machine_info() -> str:
    pkgs = ["jax", "equinox", "diffrax"]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
    )


def run(cfg: Config) -> None:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info)
    prob, net = problem(40, 200, 1e-6)
    rows = [
        bench_case("plateau 40x200", prob.loss, net, cfg.plateau_t1, 1e-9, 1e-9, cfg)
    ]
    loss, mlp = mlp_case()
    rows.append(bench_case("mlp-20", loss, mlp, cfg.mlp_t1, 1e-8, 1e-10, cfg))
    headers = (
        "case",
        "leaves",
        "flowgap ms",
        "hand pytree ms",
        "hand flat ms",
        "steps (ours/hand)",
        "flowgap/hand",
        "rel diff",
        f"<= {TARGET}",
    )
    body = table(headers, rows)
    load1 = os.getloadavg()[0]
    print(body)
    print(f"load average (1 min) at start / end: {load0:.2f} / {load1:.2f}")
    if not cfg.quick:
        append_results(
            info, body, time.perf_counter() - start, (load0, load1), "bench_engine.py"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short, no RESULTS.md")
    run(QUICK if parser.parse_args().quick else FULL)


if __name__ == "__main__":
    main()
