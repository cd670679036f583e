"""Gradient flow of a ReLU network: the smooth defaults against the non-smooth ones.

Run: `.venv/bin/python benchmarks/bench_relu.py [--quick]`. A full run prints the
tables and appends them, with the machine and load, to `benchmarks/RESULTS.md`;
`--quick` (a coarse reference, short timings) only prints.

Problem (float64): `problems.teacher_student(key(0), n=64, d=2, teacher_width=4)`
(a ReLU teacher, half mean squared error); student `models.MLP(2, 16, 1,
depth=2, key=key(1))`, tanh or ReLU, and the same ReLU net as an `eqx.nn.MLP`;
t1 = 20, saves at 0 and t1.

Rows: the tanh net at `gradient_flow`'s defaults (Tsit5, rtol 1e-8, atol 1e-10);
the ReLU net at those smooth settings, passed explicitly (what `gradient_flow`
did before it knew the net is non-smooth: it stops at `max_steps` = 100,000); the
ReLU nets at the defaults for a non-smooth model (Heun, rtol 1e-3, atol 1e-5,
PID pcoeff = icoeff = 0.3); Heun at tighter tolerances; and, for information,
other candidates: Tsit5 and Bosh3 at rtol 1e-3, Tsit5 with a forced minimum step
(`PIDController(dtmin=0.01, force_dtmin=True)`), and Euler at the constant step
0.01 (which is gradient descent with lr 0.01: the size of a GD-GF gap there).

Error: ‖θ(t1) − θ_ref(t1)‖ / ‖θ_ref(t1)‖ over the trainable arrays. References:
tanh, Dopri8 at rtol 1e-12, atol 1e-14; ReLU, Heun at the constant step 5e-5
(first order at the kinks; its own error is about ‖ref(dt) − ref(2 dt)‖ / 2,
printed). Time: warm ms per call (`bench_core.time_interleaved`: a warm-up call,
then interleaved rounds, the minimum over rounds); the row at the smooth
settings is timed by two single calls, the faster kept. "vs tanh" = t(row) /
t(tanh at its defaults); target for the ReLU net at the non-smooth defaults:
<= 2, at an error <= 1e-3.

A second table repeats the defaults on two more problems (other keys, widths 16
and 32), against a Heun reference at the constant step 1e-4. A third shows why
the smooth settings stall: along Euler's method at the step 1e-3 (GD at lr
1e-3, saved at every step) it counts the sign changes of the hidden
pre-activations, per (sample, unit) pair; pairs that change sign at step after
step mark a surface of kinks the flow slides along.
"""

import argparse
import dataclasses
import os
import platform
import time
from importlib.metadata import version

import diffrax
import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from bench_core import FULL, append_results, table, time_interleaved  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import flowgap  # noqa: E402
from flowgap import models, problems  # noqa: E402

T1 = 20.0
SMOOTH = dict(solver=diffrax.Tsit5(), rtol=1e-8, atol=1e-10)
TARGET_RATIO = 2.0
TARGET_ERROR = 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    ref_dt: float
    extra_ref_dt: float
    smooth_max_steps: int
    rounds: int
    min_sample: float
    sliding_t1: float


FULL_RUN = Config(False, 5e-5, 1e-4, 100_000, 7, 0.3, 20.0)
QUICK = Config(True, 1e-3, 1e-3, 10_000, 2, 0.05, 2.0)


def flat(model):
    return ravel_pytree(eqx.filter(model, eqx.is_inexact_array))[0]


def rel_err(model, ref) -> float:
    return float(jnp.linalg.norm(flat(model) - ref) / jnp.linalg.norm(ref))


def setting(pk, ik, width):
    prob = problems.teacher_student(jax.random.key(pk), n=64, d=2, teacher_width=4)
    key = jax.random.key(ik)
    nets = {
        act: models.MLP(2, width, 1, depth=2, activation=act, key=key)
        for act in ("tanh", "relu")
    }
    nets["eqx relu"] = eqx.nn.MLP(2, 1, width, 2, activation=jax.nn.relu, key=key)
    return prob, nets


def heun_reference(prob, net, dt):
    steps = round(T1 / dt)
    traj = flowgap.gradient_flow(
        prob.loss,
        net,
        t1=T1,
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=dt,
        max_steps=steps + 10,
    )
    return flat(traj.final)


def method_rows(cfg: Config):
    """(model, method, model key, gradient_flow keywords) of the main table."""
    dtmin = diffrax.PIDController(
        rtol=1e-6, atol=1e-8, pcoeff=0.3, icoeff=0.3, dtmin=0.01, force_dtmin=True
    )
    return [
        ("MLP tanh", "defaults: Tsit5 1e-8/1e-10", "tanh", {}),
        (
            "MLP relu",
            "smooth settings: Tsit5 1e-8/1e-10",
            "relu",
            dict(SMOOTH, max_steps=cfg.smooth_max_steps),
        ),
        ("MLP relu", "defaults: Heun 1e-3/1e-5", "relu", {}),
        ("eqx.nn.MLP relu", "defaults: Heun 1e-3/1e-5", "eqx relu", {}),
        ("MLP relu", "Heun 1e-4/1e-6", "relu", dict(rtol=1e-4, atol=1e-6)),
        (
            "MLP relu",
            "Heun 1e-5/1e-7",
            "relu",
            dict(rtol=1e-5, atol=1e-7, max_steps=300_000),
        ),
        (
            "MLP relu",
            "info: Tsit5 1e-3/1e-5",
            "relu",
            dict(solver=diffrax.Tsit5()),
        ),
        (
            "MLP relu",
            "info: Bosh3 1e-3/1e-5",
            "relu",
            dict(solver=diffrax.Bosh3()),
        ),
        (
            "MLP relu",
            "info: Tsit5 1e-6/1e-8, dtmin 0.01 forced",
            "relu",
            dict(solver=diffrax.Tsit5(), stepsize_controller=dtmin),
        ),
        (
            "MLP relu",
            "info: Euler, constant step 0.01 (= GD lr 0.01)",
            "relu",
            dict(
                solver=diffrax.Euler(),
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=0.01,
            ),
        ),
    ]


def main_table(cfg: Config):
    prob, nets = setting(0, 1, 16)
    tight = dict(solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-14)
    refs = {
        "tanh": flat(
            flowgap.gradient_flow(prob.loss, nets["tanh"], t1=T1, **tight).final
        )
    }
    refs["relu"] = heun_reference(prob, nets["relu"], cfg.ref_dt)
    coarse = heun_reference(prob, nets["relu"], 2 * cfg.ref_dt)
    ref_check = float(
        jnp.linalg.norm(coarse - refs["relu"]) / jnp.linalg.norm(refs["relu"])
    )
    refs["eqx relu"] = refs["relu"]  # the same function, parameters and init
    rows = method_rows(cfg)

    def call(net, kw):
        return lambda: jax.block_until_ready(
            flowgap.gradient_flow(prob.loss, nets[net], t1=T1, **kw)
        )

    timed = {i: call(net, kw) for i, (_, m, net, kw) in enumerate(rows) if i != 1}
    best = time_interleaved(
        timed, dataclasses.replace(FULL, rounds=cfg.rounds, min_sample=cfg.min_sample)
    )
    slow = call(rows[1][2], rows[1][3])
    slow()  # compile
    best[1] = min(_seconds(slow) for _ in range(2))
    trajs = [
        flowgap.gradient_flow(prob.loss, nets[net], t1=T1, **kw)
        for _, _, net, kw in rows
    ]
    evals = [int(traj.stats["num_field_evals"]) for traj in trajs]
    out = [
        (
            model,
            method,
            f"{float(traj.stop_time):.3g}",
            int(traj.stats["num_steps"]),
            int(traj.stats["num_rejected_steps"]),
            evals[i],
            f"{best[i] * 1e3:.1f}",
            f"{rel_err(traj.final, refs[net]):.2e}",
            f"{best[i] / best[0]:.2f}",
            f"{evals[i] / evals[0]:.2f}",
        )
        for i, ((model, method, net, _), traj) in enumerate(zip(rows, trajs))
    ]
    headers = (
        "model",
        "method (solver rtol/atol)",
        "t reached",
        "steps",
        "rejected",
        "field evals",
        "ms",
        "error",
        "ms vs tanh",
        "evals vs tanh",
    )
    head = (
        f"GF to t1 = {T1:g}: teacher_student(key 0, n 64, d 2, teacher width 4), "
        "student 2-16-16-1 (key 1). Error = ||theta(t1) - ref|| / ||ref||; refs: "
        f"tanh Dopri8 1e-12/1e-14, relu Heun constant dt {cfg.ref_dt:g} "
        f"(||ref(dt) - ref(2dt)|| / ||ref|| = {ref_check:.1e})"
    )
    ratio = best[2] / best[0]
    error = float(out[2][7])
    targets = [
        (
            "MLP relu, defaults: t / t(tanh defaults)",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO:g}x",
            "PASS" if ratio <= TARGET_RATIO else "MISS",
        ),
        (
            "MLP relu, defaults: error at t1",
            f"{error:.1e}",
            f"<= {TARGET_ERROR:g}",
            "PASS" if error <= TARGET_ERROR else "MISS",
        ),
    ]
    return (
        head
        + "\n"
        + table(headers, out)
        + "\n\nTargets\n"
        + table(("target", "measured", "target", "result"), targets)
    )


def sliding_table(cfg: Config):
    """Sign changes of the hidden pre-activations along Euler's method at the
    step 1e-3 (gradient descent at lr 1e-3), saved at every step."""
    prob, nets = setting(0, 1, 16)
    dt = 1e-3
    steps = round(cfg.sliding_t1 / dt)
    traj = flowgap.gradient_flow(
        prob.loss,
        nets["relu"],
        t1=cfg.sliding_t1,
        ts=jnp.linspace(0.0, cfg.sliding_t1, steps + 1),
        solver=diffrax.Euler(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=dt,
        max_steps=steps + 10,
    )

    def signs(model):
        def one(x):
            out = []
            for layer in model.layers[:-1]:
                z = layer(x)
                out.append(z > 0)
                x = jax.nn.relu(z)
            return jnp.concatenate(out)

        return jax.vmap(one)(prob.inputs)

    pattern = jax.lax.map(signs, traj.models, batch_size=256)
    changes = jnp.sum(pattern[1:] != pattern[:-1], axis=0)  # per (sample, unit)
    per_step = jnp.sum(pattern[1:] != pattern[:-1], axis=(1, 2))
    rows = [
        ("(sample, hidden unit) pairs", int(changes.size)),
        ("pairs whose input changes sign at least once", int(jnp.sum(changes > 0))),
        (
            "pairs whose input changes sign more than 10 times",
            int(jnp.sum(changes > 10)),
        ),
        ("most sign changes of one pair", int(jnp.max(changes))),
        ("steps with a sign change", f"{int(jnp.sum(per_step > 0))} of {steps}"),
        ("sign changes in all", int(jnp.sum(changes))),
    ]
    head = (
        f"Why the smooth settings stall: the ReLU MLP above along Euler's method at "
        f"the constant step {dt:g} (GD at lr {dt:g}) to t = {cfg.sliding_t1:g}, "
        "signs of the hidden pre-activations at every step. A pair that changes "
        "sign at step after step is chattering about a surface the flow slides along."
    )
    return head + "\n" + table(("count", "value"), rows)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def robustness_table(cfg: Config):
    rows = []
    for pk, ik, width in [(2, 3, 16), (4, 5, 32)]:
        prob, nets = setting(pk, ik, width)
        ref = heun_reference(prob, nets["relu"], cfg.extra_ref_dt)
        for label, kw in [
            ("defaults: Heun 1e-3/1e-5", {}),
            ("Heun 1e-4/1e-6", dict(rtol=1e-4, atol=1e-6)),
        ]:
            traj = flowgap.gradient_flow(prob.loss, nets["relu"], t1=T1, **kw)
            rows.append(
                (
                    f"key {pk}/{ik}, width {width}",
                    label,
                    f"{float(traj.stop_time):.3g}",
                    int(traj.stats["num_steps"]),
                    int(traj.stats["num_rejected_steps"]),
                    int(traj.stats["num_field_evals"]),
                    f"{rel_err(traj.final, ref):.2e}",
                )
            )
    head = (
        "The ReLU MLP on other problems (teacher_student key / student key, n 64, "
        f"d 2, depth 2); ref: Heun constant dt {cfg.extra_ref_dt:g}"
    )
    headers = ("problem", "method", "t reached", "steps", "rejected", "evals", "error")
    return head + "\n" + table(headers, rows)


def machine_info() -> str:
    pkgs = ["jax", "jaxlib", "equinox", "diffrax"]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
        + "; command: `.venv/bin/python benchmarks/bench_relu.py`"
    )


def run(cfg: Config) -> None:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info, flush=True)
    if cfg.quick:
        print("QUICK MODE: coarse references; RESULTS.md is not written.")
    sections = [main_table(cfg)]
    print(sections[-1] + "\n", flush=True)
    sections.append(robustness_table(cfg))
    print(sections[-1] + "\n", flush=True)
    sections.append(sliding_table(cfg))
    print(sections[-1])
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print(
        f"\ntotal {wall:.0f} s; load average (1 min) at start / end: "
        f"{load0:.2f} / {load1:.2f}"
    )
    if not cfg.quick:
        append_results(
            info, "\n\n".join(sections), wall, (load0, load1), "bench_relu.py"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short, no RESULTS.md")
    run(QUICK if parser.parse_args().quick else FULL_RUN)


if __name__ == "__main__":
    main()
