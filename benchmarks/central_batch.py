"""`bench_central.py`'s batch section: eight learning rates η in [0.3, 0.5] as one
`jax.jit(jax.vmap(solve))` program against flowgap's solo program called eight
times in turn, and the reference algorithm under `jax.vmap`, which its per-substep
host callback rules out.
"""

import jax
import numpy as np
from bench_core import table
from central_reference import HostQP, host_callback
from central_setup import (
    BATCH_LRS,
    Timer,
    Truth,
    compilations,
    integer,
    real,
    reference,
    rel,
)


def batch_program(solve):
    """`jax.jit` of `solve` vmapped over η, and a one-element list counting the
    traces of the vmapped function."""
    traces = [0]

    def batch_fn(params, lrs, rtol):
        traces[0] += 1
        return jax.vmap(solve, in_axes=(None, 0, None))(params, lrs, rtol)

    return jax.jit(batch_fn), traces


def batch_table(times: dict, batch_compile: float, solo_compile: float) -> str:
    """Warm seconds of the batch call and of the eight solo calls, with their
    compile seconds (the solo program's is shared with the ladders)."""
    n = len(BATCH_LRS)
    batch = (
        f"jit(vmap(central_flow)), one call of {n}",
        f"{times['batch']:.3f}",
        f"{times['batch'] / times['sequential']:.2f}",
        f"{batch_compile:.1f}",
    )
    sequential = (
        f"jit(central_flow), {n} calls in turn",
        f"{times['sequential']:.3f}",
        "1.00",
        f"{solo_compile:.1f} (shared)",
    )
    headers = ("program", "seconds", "vs sequential", "compile s")
    return table(headers, [batch, sequential])


def batch_section(truth: Truth, rtol: float, emit) -> None:
    """Eight learning rates at `rtol`: one jit(vmap) call against eight solo
    calls. The batch function is traced and compiled once over two calls with
    different learning rates; its runs must agree with the solo ones."""
    cfg, params, ours = truth.cfg, truth.params, truth.ours
    lrs = real(BATCH_LRS)
    solo_lrs = [real(x) for x in BATCH_LRS]
    other = real(BATCH_LRS[::-1] + 1e-3)
    rtol = real(rtol)
    batch, traces = batch_program(truth.solve)
    with compilations() as first:
        out = jax.block_until_ready(batch(params, lrs, rtol))
    with compilations() as second:
        jax.block_until_ready(batch(params, other, rtol))

    fns = {
        "batch": lambda: batch(params, lrs, rtol),
        "sequential": lambda: [ours(params, x, rtol) for x in solo_lrs],
    }
    timer = Timer(cfg)
    solo = timer("sequential", fns["sequential"])
    timer("batch", fns["batch"])
    times = timer.rounds(fns, cfg.rounds - 1)
    agree = max(rel(out[0][i], s[0]) for i, s in enumerate(solo))
    active = int(np.sum(np.asarray(out[3]["sigma"])[:, -1] > 0))
    n = len(BATCH_LRS)
    steps = np.asarray(out[1])
    emit(
        "",
        f"Batch of {n} learning rates {BATCH_LRS[0]:g}..{BATCH_LRS[-1]:g}, t1 "
        f"{cfg.t1:g}, flowgap rtol {float(rtol):g}: QP active at t1 in {active}/{n} "
        f"runs; solver steps {steps.min()}..{steps.max()}",
        batch_table(times, first["seconds"], truth.compile_seconds),
        f"traces of the batch function in two calls with different lrs: "
        f"{traces[0]}; XLA compiles: first call {first['compiles']}, second call "
        f"{second['compiles']}, timed calls {timer.compiles}",
        f"max ||theta_batch - theta_solo|| / ||theta_solo|| at t1: {agree:.1e}",
    )


def vmap_attempt_section(truth: Truth, qp: HostQP, emit) -> None:
    """Trace the reference algorithm under `jax.vmap` over η and print what
    happens: `jax.pure_callback` without a `vmap_method`, as the reference calls
    it, raises."""
    try:
        vmapped = jax.vmap(reference(truth, host_callback(qp)), (None, 0, None))
        jax.jit(vmapped)(truth.theta0, real(BATCH_LRS), integer(1))
        verdict = "ran"
    except NotImplementedError as error:
        verdict = f"NotImplementedError: {str(error).split(' when ')[0]}"
    emit(
        "",
        "The reference algorithm under jax.vmap (a host callback every substep, as "
        f"the reference's cvxpy call): {verdict}",
    )
