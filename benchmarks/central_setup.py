"""What `bench_central.py`'s sections share: the settings, the problem, flowgap's
solve, the reference algorithm at the same k and Lanczos steps, and how calls are
timed and compilations counted; and the first section, the truth and where its QP
is active.
"""

import math
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from bench_core import table
from central_reference import reference_solver
from jax.flatten_util import ravel_pytree

import flowgap
from flowgap import models, problems

jax.config.update("jax_enable_x64", True)

LR = 0.4
K = 1
LANCZOS_STEPS = 20
ATOL_PER_RTOL = 1e-2  # flowgap's default atol / rtol = 1e-10 / 1e-8
MAX_STEPS = 10**6
SAVES = 9
BATCH_LRS = np.linspace(0.3, 0.5, 8)
# the reference's gradient evaluations per substep: ∇L, Lanczos, the g_ab
PER_SUBSTEP = 1 + LANCZOS_STEPS + K * (K + 1) // 2


@dataclass(frozen=True)
class Config:
    quick: bool
    t1: float
    truth_rtol: float
    target: float
    max_m: int
    rtols: tuple[float, ...]
    min_sample: float  # seconds per timing sample
    rounds: int  # timing samples per program, the first from the ladder


RTOLS = tuple(10.0**-j for j in range(2, 10))
FULL = Config(False, 40.0, 1e-10, 1e-4, 128, RTOLS, 1.0, 3)
QUICK = Config(True, 16.0, 1e-9, 1e-3, 8, RTOLS, 0.1, 1)


@dataclass(frozen=True)
class Truth:
    """The problem, flowgap's solve (`solve`, and `ours` = its `jax.jit`,
    compiled in `compile_seconds`) and θ(t1) at `cfg.truth_rtol`."""

    cfg: Config
    loss: Callable
    net: eqx.Module
    params: Any
    theta0: jax.Array
    solve: Callable
    ours: Callable
    compile_seconds: float
    theta: jax.Array

    @property
    def steps(self) -> int:
        """GD steps in [0, t1]."""
        return round(self.cfg.t1 / LR)


def machine_info() -> str:
    pkgs = ["jax", "jaxlib", "equinox", "diffrax", "numpy", "scipy"]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
    )


def setup():
    kp, km = jax.random.split(jax.random.key(0))
    prob = problems.teacher_student(
        kp, n=64, d=5, teacher_width=8, activation="tanh", decay=0.5
    )
    net = models.MLP(5, 32, 1, depth=2, activation="tanh", key=km)
    return prob.loss, net


def flowgap_solver(loss, model, t1: float):
    """`solve(params, η, rtol)` → (θ(t1), steps, gradient evaluations, aux)."""
    _, static = eqx.partition(model, eqx.is_inexact_array)
    ts = jnp.linspace(0.0, t1, SAVES)

    def solve(params, lr, rtol):
        traj = flowgap.central_flow(
            loss,
            eqx.combine(params, static),
            lr=lr,
            t1=t1,
            ts=ts,
            k=K,
            lanczos_steps=LANCZOS_STEPS,
            rtol=rtol,
            atol=rtol * ATOL_PER_RTOL,
            max_steps=MAX_STEPS,
        )
        final = eqx.filter(traj.final, eqx.is_inexact_array)
        return (
            ravel_pytree(final)[0],
            traj.stats["num_steps"],
            traj.stats["num_grad_evals"],
            dict(sharpness=traj.aux["sharpness"], sigma=traj.aux["sigma_trace"]),
        )

    return solve, ts


def reference(truth: Truth, solve_qp):
    """`solve(θ₀, η, m)` → θ(t1) by the reference algorithm on the truth's
    problem, at this benchmark's k and Lanczos steps, the QP by `solve_qp`."""
    return reference_solver(
        truth.loss, truth.net, solve_qp, truth.cfg.t1, k=K, lanczos_steps=LANCZOS_STEPS
    )


def real(x):
    """A strongly typed float64 array: a weakly typed one (from a Python float)
    is another jit cache entry, i.e. a recompilation."""
    return jnp.asarray(np.asarray(x, np.float64))


def integer(x):
    return jnp.asarray(np.int64(x))


def rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@contextmanager
def compilations():
    """Count XLA compiles and sum tracing + lowering + compile seconds while
    the block runs (jax.monitoring's duration events)."""
    events = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    record = {"compiles": 0, "seconds": 0.0}

    def listen(event, duration, **_):
        if event in events:
            record["seconds"] += duration
            record["compiles"] += event == events[-1]

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield record
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


class Timer:
    """Warm seconds per call, the minimum over samples; every ladder call is a
    sample, `rounds` adds interleaved ones (each of at least `min_sample` s)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.best = {}
        self.compiles = 0  # XLA compiles inside timed calls: should stay 0

    def __call__(self, name, fn):
        with compilations() as record:
            start = time.perf_counter()
            out = jax.block_until_ready(fn())
            seconds = time.perf_counter() - start
        self.compiles += record["compiles"]
        self.best[name] = min(self.best.get(name, math.inf), seconds)
        return out

    def rounds(self, fns: dict, count: int) -> dict:
        for _ in range(count):
            for name, fn in fns.items():
                reps = max(1, math.ceil(self.cfg.min_sample / self.best[name]))
                with compilations() as record:
                    start = time.perf_counter()
                    for _ in range(reps):
                        jax.block_until_ready(fn())
                    seconds = (time.perf_counter() - start) / reps
                self.compiles += record["compiles"]
                self.best[name] = min(self.best[name], seconds)
        return {name: self.best[name] for name in fns}


def activity(aux, ts) -> str:
    """Sharpness·η/2 and tr Σ of the truth at its saves."""
    return table(
        ("t", *(f"{t:g}" for t in np.asarray(ts))),
        [
            ("sharpness*eta/2", *(f"{s:.4f}" for s in aux["sharpness"] * LR / 2)),
            ("tr Sigma", *(f"{s:.2e}" for s in aux["sigma"])),
        ],
    )


def truth_section(cfg: Config, emit) -> Truth:
    """Compile flowgap's solve, solve at `cfg.truth_rtol` and print where the QP
    is active; stop if tr Σ = 0 at t1 (the setup is not past the edge)."""
    loss, net = setup()
    params = eqx.filter(net, eqx.is_inexact_array)
    theta0 = ravel_pytree(params)[0]
    steps = round(cfg.t1 / LR)
    solve, ts = flowgap_solver(loss, net, cfg.t1)
    ours = jax.jit(solve)
    with compilations() as record:
        truth, truth_steps, truth_work, aux = ours(
            params, real(LR), real(cfg.truth_rtol)
        )
        jax.block_until_ready(truth)
    aux = jax.tree.map(np.asarray, aux)
    emit(
        f"Central flow, tanh MLP 5-32-32-1 (D = {theta0.size}), eta {LR}, k {K}, "
        f"{LANCZOS_STEPS} Lanczos steps, t1 {cfg.t1:g} ({steps} GD steps). Truth: "
        f"flowgap rtol {cfg.truth_rtol:g} ({int(truth_steps)} steps, {int(truth_work)} "
        "grad evals); at its saves:",
        activity(aux, ts),
    )
    if not aux["sigma"][-1] > 0:
        raise RuntimeError("the QP is not active at t1: not a setup past the edge")
    return Truth(cfg, loss, net, params, theta0, solve, ours, record["seconds"], truth)
