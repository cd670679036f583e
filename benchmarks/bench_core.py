"""Core performance benchmark of flowgap's two trainers (float64, CPU).

Run: `.venv/bin/python benchmarks/bench_core.py [--quick]`. A full run prints the
tables below and appends them, with the date and machine, to
`benchmarks/RESULTS.md`; `--quick` is a smoke test (small step counts, a 10^5-step
memory run) that only prints and never writes RESULTS.md.

Problem: `problems.sparse_recovery(key(0), n, d, sparsity=5)`; model: depth-2
`DiagonalNet`; loss L = 0.5 mean((X beta - y)^2) with beta = u^2 - v^2.

1. Gradient descent (lr 0.01, init scale 0.1, a save every 100 steps) at n x d =
   40 x 200 and 100 x 1000:
   - `flowgap.gradient_descent` vs a hand-written jitted nested `lax.scan` doing
     the same update with `jax.grad` of the same loss (data passed as traced
     arguments, as flowgap does). The row "hand scan + guard" adds a per-step
     divergence guard (loss value, isfinite test, select) to the hand scan: the
     cost flowgap avoids by checking once per save interval (it guards every step
     only when `stop_when` is given).
   - vs a PyTorch eager loop (float64, 2 threads, `loss.backward()` and an
     in-place update under `no_grad`), timed over fewer steps, compared per step.
   - agreement of the final (u, v): ||theta_a - theta_b|| / ||theta_b||,
     theta = (u, v).
   - achieved GFLOP/s, counting 4nd + 11d + 2n flops per step: X beta and X^T r
     (2nd each), beta = u^2 - v^2 (3d), r = X beta - y and r / n (2n), the
     chain-rule products 2u g and -2v g (4d), the two updates p - lr g (4d). The
     loss value flowgap also computes is not counted. The limit it is compared
     with is numpy's measured float64 mat-vec rate `X @ w` at the same size
     (2nd flops per call, Python call overhead included).
2. Gradient flow on 40 x 200 (Dopri8, PID step-size control, 101 saves):
   - init 0.1, t1 = 100: `flowgap.gradient_flow` vs a hand-written
     `diffrax.diffeqsolve` with the same solver, controller, tolerances and ts.
   - init 1e-6 (saddle-to-saddle plateaus), t1 = 10^4 (where L < 1e-8): flowgap vs
     `scipy.integrate.solve_ivp(method="DOP853")` given a hand-coded numpy
     gradient, same rtol, atol and save times; both are scored against a
     tight-tolerance (rtol 1e-12, atol 1e-16) scipy DOP853 reference. flowgap and
     the hand-written solve use flowgap's default PI controller (pcoeff = icoeff
     = 0.3); an info row shows the hand solve with Diffrax's default I-control.
   - the fixed cost of one warm call (GD of 100 steps, GF to t1 = 1e-3), flowgap
     vs the hand-written versions.
3. Peak resident memory (`/usr/bin/time -v`, "Maximum resident set size") of
   child processes `bench_core.py --child NAME`: imports and problem only; 10^6
   GD steps at 100 x 1000 saving 1,001 points; gradient flow at 100 x 1000
   (t1 = 1000, Dopri8, rtol 1e-8, atol 1e-10) saved at 1,000 points. Torch and
   scipy are imported lazily, so the children never load them. MB = 10^6 bytes.

Timing: each callable is called once first (compilation excluded), then timed in
rounds that interleave the implementations being compared, so load from other
processes hits them alike; within a round a callable repeats until at least
`min_sample` seconds have passed. We report the minimum over rounds.

Ratios: "slowdown" = t(flowgap) / t(hand-written), target <= 1.25; "speed-up" =
t(other) / t(flowgap), targets >= 30 (torch, 40 x 200), >= 5 (torch,
100 x 1000) and >= 3 (scipy). Each target is printed with PASS or MISS as
measured.
"""

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import flowgap  # noqa: E402
from flowgap import models, problems  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
LR = 0.01
SCALE = 0.1
SAVE_EVERY = 100
SOLVER = diffrax.Dopri8()
MAX_STEPS = 10**6
AGREE_TOL = 1e-10


@dataclass(frozen=True)
class GDRun:
    n: int
    d: int
    steps: int  # for the JAX implementations
    torch_steps: int
    torch_target: float  # required speed-up of flowgap over torch


@dataclass(frozen=True)
class Config:
    quick: bool
    gd_runs: tuple[GDRun, ...]
    min_sample: float  # seconds per timing sample
    rounds: int
    plateau_t1: float
    memory_gd_steps: int


FULL = Config(
    quick=False,
    gd_runs=(GDRun(40, 200, 400_000, 5_000, 30), GDRun(100, 1000, 40_000, 5_000, 5)),
    min_sample=0.5,
    rounds=5,
    plateau_t1=10_000.0,
    memory_gd_steps=10**6,
)
QUICK = Config(
    quick=True,
    gd_runs=(GDRun(40, 200, 20_000, 500, 30), GDRun(100, 1000, 2_000, 200, 5)),
    min_sample=0.05,
    rounds=3,
    plateau_t1=2_000.0,
    memory_gd_steps=10**5,
)


# ------------------------------------------------------------------ helpers


def elapsed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - start


def time_interleaved(fns: dict, cfg: Config) -> dict:
    """Minimum seconds per call of each (blocking) callable in `fns`."""
    reps = {}
    for name, fn in fns.items():
        fn()  # compile / warm up
        reps[name] = max(1, math.ceil(cfg.min_sample / max(elapsed(fn, 1), 1e-9)))
    best = dict.fromkeys(fns, math.inf)
    for _ in range(cfg.rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], elapsed(fn, reps[name]) / reps[name])
    return best


def blocking(fn):
    return lambda: jax.block_until_ready(fn())


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def rel_diff(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def table(headers, rows) -> str:
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(name, value, op, target, unit="x", digits=2) -> tuple:
    ok = value <= target if op == "<=" else value >= target
    measured = f"{value:.{digits}f}{unit}"
    return (name, measured, f"{op} {target:g}{unit}", "PASS" if ok else "MISS")


def lsq_loss(params, x, y):
    u, v = params
    return 0.5 * jnp.mean((x @ (u * u - v * v) - y) ** 2)


def problem(n, d, scale):
    prob = problems.sparse_recovery(jax.random.key(0), n=n, d=d, sparsity=5)
    return prob, models.DiagonalNet(d, depth=2, scale=scale)


def theta(model):
    return (np.asarray(model.u), np.asarray(model.v))


# ------------------------------------------------------- 1. gradient descent


def flowgap_gd(prob, model, steps):
    return flowgap.gradient_descent(
        prob.loss, model, lr=LR, steps=steps, save_every=SAVE_EVERY
    )


def flowgap_gd_final(prob, model, steps):
    final = flowgap_gd(prob, model, steps).final
    return final.u, final.v


@functools.partial(jax.jit, static_argnames=("steps", "guard"))
def hand_scan_gd(u, v, x, y, lr, steps, guard=False):
    """`steps // SAVE_EVERY` saves of (θ, L), SAVE_EVERY plain GD steps apart.

    With `guard`, every step also evaluates L and keeps θ unless L is finite,
    as flowgap's divergence guard does.
    """
    loss = functools.partial(lsq_loss, x=x, y=y)

    def step(carry, _):
        params, alive = carry
        if not guard:
            grads = jax.grad(loss)(params)
            return (jax.tree.map(lambda p, g: p - lr * g, params, grads), alive), None
        value, grads = jax.value_and_grad(loss)(params)
        alive = alive & jnp.isfinite(value)
        new = jax.tree.map(lambda p, g: jnp.where(alive, p - lr * g, p), params, grads)
        return (new, alive), None

    def segment(carry, _):
        saved = (carry[0], loss(carry[0]))
        return lax.scan(step, carry, None, length=SAVE_EVERY)[0], saved

    carry = ((u, v), jnp.array(True))
    carry, saves = lax.scan(segment, carry, None, length=steps // SAVE_EVERY)
    return carry[0], saves


def torch_gd(x, y, d, steps):
    """Eager PyTorch loop; returns the final (u, v) and the saves."""
    import torch

    torch.set_num_threads(2)
    x, y = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
    u = torch.full((d,), SCALE, dtype=torch.float64, requires_grad=True)
    v = torch.full((d,), SCALE, dtype=torch.float64, requires_grad=True)
    saves = []
    for k in range(steps):
        loss = 0.5 * torch.mean((x @ (u * u - v * v) - y) ** 2)
        if k % SAVE_EVERY == 0:
            saves.append((u.detach().clone(), v.detach().clone(), loss.detach()))
        loss.backward()
        with torch.no_grad():
            u.add_(u.grad, alpha=-LR)
            v.add_(v.grad, alpha=-LR)
        u.grad = v.grad = None
    return (u.detach().numpy(), v.detach().numpy()), saves


def gd_implementations(prob, model, run: GDRun) -> dict:
    """name -> (callable returning the final (u, v), steps it takes)."""
    x, y, lr = prob.inputs, prob.targets, jnp.asarray(LR)
    return {
        "flowgap": (lambda: flowgap_gd_final(prob, model, run.steps), run.steps),
        "hand scan": (
            lambda: hand_scan_gd(model.u, model.v, x, y, lr, run.steps)[0],
            run.steps,
        ),
        "hand scan + guard": (
            lambda: hand_scan_gd(model.u, model.v, x, y, lr, run.steps, guard=True)[0],
            run.steps,
        ),
        "torch eager": (
            lambda: torch_gd(x, y, run.d, run.torch_steps)[0],
            run.torch_steps,
        ),
    }


def matvec_seconds(x, cfg: Config) -> float:
    """Seconds per numpy float64 `X @ w` (Python call overhead included)."""
    x = np.asarray(x)
    w = np.ones(x.shape[1])
    return time_interleaved({"mat-vec": lambda: x @ w}, cfg)["mat-vec"]


def gd_agreement(prob, model, impls: dict) -> list:
    """(name, steps, rel diff to a flowgap run of the same number of steps)."""
    rows, refs = [], {}
    for name, (final, steps) in impls.items():
        if name != "flowgap":
            if steps not in refs:
                refs[steps] = flowgap_gd_final(prob, model, steps)
            rows.append((name, steps, rel_diff(final(), refs[steps])))
    return rows


def bench_gd_run(run: GDRun, cfg: Config):
    prob, model = problem(run.n, run.d, SCALE)
    impls = gd_implementations(prob, model, run)
    fns = {name: blocking(final) for name, (final, _) in impls.items()}
    per_step = {
        name: seconds / impls[name][1]
        for name, seconds in time_interleaved(fns, cfg).items()
    }
    mv = matvec_seconds(prob.inputs, cfg)
    limit = 2 * run.n * run.d / mv / 1e9
    flops = 4 * run.n * run.d + 11 * run.d + 2 * run.n
    size = f"{run.n}x{run.d}"
    rows = [
        (
            size,
            name,
            impls[name][1],
            f"{t * 1e6:.3f}",
            f"{t / per_step['flowgap']:.3f}",
            f"{flops / t / 1e9:.2f}",
            f"{100 * flops / t / 1e9 / limit:.0f}%",
        )
        for name, t in per_step.items()
    ]
    agree = [
        (
            size,
            f"{name} vs flowgap",
            steps,
            f"{r:.2e}",
            "yes" if r <= AGREE_TOL else "NO",
        )
        for name, steps, r in gd_agreement(prob, model, impls)
    ]
    targets = [
        verdict(
            f"GD {size}: flowgap / hand scan (slowdown)",
            per_step["flowgap"] / per_step["hand scan"],
            "<=",
            1.25,
        ),
        verdict(
            f"GD {size}: torch eager / flowgap (speed-up)",
            per_step["torch eager"] / per_step["flowgap"],
            ">=",
            run.torch_target,
        ),
    ]
    limit_text = f"{size}: {mv * 1e6:.2f} us = {limit:.2f} GFLOP/s"
    return rows, agree, targets, limit_text


def bench_gd(cfg: Config):
    rows, agree, targets, limits = [], [], [], []
    for run in cfg.gd_runs:
        r, a, t, lim = bench_gd_run(run, cfg)
        rows, agree, targets, limits = rows + r, agree + a, targets + t, limits + [lim]
    headers = [
        "size",
        "implementation",
        "steps",
        "us/step",
        "vs flowgap",
        "GFLOP/s",
        "of mat-vec limit",
    ]
    text = "\n".join(
        [
            f"GD sparse recovery: depth-2 DiagonalNet, init {SCALE}, lr {LR}, a save "
            f"every {SAVE_EVERY} steps; min of {cfg.rounds} rounds",
            table(headers, rows),
            "flops/step = 4nd + 11d + 2n. Mat-vec limit = numpy float64 X @ w, "
            "2nd flops per call (its Python call overhead included, so > 100% is "
            "possible): " + "; ".join(limits),
            "",
            "Final (u, v) agreement with flowgap run for the same steps: "
            f"||theta_a - theta_b|| / ||theta_b|| <= {AGREE_TOL:g}?",
            table(["size", "pair", "steps", "rel diff", "agree"], agree),
        ]
    )
    return text, targets


# ---------------------------------------------------------- 2. gradient flow


def flowgap_gf(prob, model, t1, ts, rtol, atol):
    return flowgap.gradient_flow(
        prob.loss,
        model,
        t1=t1,
        ts=ts,
        solver=SOLVER,
        rtol=rtol,
        atol=atol,
        max_steps=MAX_STEPS,
    )


def _negative_gradient(t, params, args):
    return jax.tree.map(jnp.negative, jax.grad(lsq_loss)(params, *args))


@functools.partial(jax.jit, static_argnames=("pcoeff", "icoeff"))
def hand_gf(u, v, x, y, t1, ts, rtol, atol, pcoeff=0.3, icoeff=0.3):
    """Plain `diffeqsolve`; (saved (u, v), stats). Defaults = flowgap's PI control
    (pcoeff = icoeff = 0.3); pcoeff=0, icoeff=1 is Diffrax's own default I-control."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_negative_gradient),
        SOLVER,
        t0=0.0,
        t1=t1,
        dt0=None,
        y0=(u, v),
        args=(x, y),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(
            rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff
        ),
        max_steps=MAX_STEPS,
    )
    return sol.ys, sol.stats


def numpy_field(x, y):
    """dθ/dt = −∇L for θ = (u, v) stacked, with the analytic gradient."""
    x, y = np.asarray(x), np.asarray(y)
    xt_over_n, d = x.T / x.shape[0], x.shape[1]

    def field(t, th):
        u, v = th[:d], th[d:]
        g = xt_over_n @ (x @ (u * u - v * v) - y)
        return np.concatenate((-2.0 * u * g, 2.0 * v * g))

    return field


def scipy_gf(prob, theta0, t1, ts, rtol, atol):
    from scipy.integrate import solve_ivp

    sol = solve_ivp(
        numpy_field(prob.inputs, prob.targets),
        (0.0, t1),
        theta0,
        method="DOP853",
        t_eval=np.asarray(ts),
        rtol=rtol,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol


def steps_text(stats) -> str:
    return f"{int(stats['num_accepted_steps'])}/{int(stats['num_rejected_steps'])}"


def bench_gf_vs_hand(cfg: Config):
    prob, model = problem(40, 200, SCALE)
    t1, ts = jnp.asarray(100.0), jnp.linspace(0.0, 100.0, 101)
    rtol, atol = jnp.asarray(1e-8), jnp.asarray(1e-10)
    args = (model.u, model.v, prob.inputs, prob.targets, t1, ts, rtol, atol)
    times = time_interleaved(
        {
            "flowgap": blocking(lambda: flowgap_gf(prob, model, t1, ts, rtol, atol)),
            "hand diffeqsolve": blocking(lambda: hand_gf(*args)),
        },
        cfg,
    )
    traj = flowgap_gf(prob, model, t1, ts, rtol, atol)
    ys, stats = hand_gf(*args)
    diff = rel_diff([a[-1] for a in ys], theta(traj.final))
    rows = [
        ("flowgap", f"{times['flowgap'] * 1e3:.2f}", steps_text(traj.stats), "", ""),
        (
            "hand diffeqsolve",
            f"{times['hand diffeqsolve'] * 1e3:.2f}",
            steps_text(stats),
            f"{times['flowgap'] / times['hand diffeqsolve']:.3f}",
            f"{diff:.2e}",
        ),
    ]
    text = "\n".join(
        [
            f"GF 40x200, init {SCALE}, t1 100, Dopri8, rtol 1e-8, atol 1e-10, "
            "101 saves",
            table(
                [
                    "implementation",
                    "ms/solve",
                    "steps acc/rej",
                    "flowgap slowdown",
                    "final rel diff",
                ],
                rows,
            ),
        ]
    )
    slowdown = times["flowgap"] / times["hand diffeqsolve"]
    return text, [
        verdict(
            "GF 40x200: flowgap / hand diffeqsolve (slowdown)", slowdown, "<=", 1.25
        )
    ]


def plateau_solvers(prob, model, t1, ts, rtol, atol) -> dict:
    """label -> callable returning (final θ as one vector, work done)."""
    theta0 = flat(theta(model))
    x, y = prob.inputs, prob.targets

    def with_flowgap():
        traj = jax.block_until_ready(flowgap_gf(prob, model, t1, ts, rtol, atol))
        return flat(theta(traj.final)), f"{steps_text(traj.stats)} steps"

    def with_scipy():
        sol = scipy_gf(prob, theta0, t1, ts, rtol, atol)
        return sol.y[:, -1], f"{sol.nfev} f-evals"

    def with_i_control():
        ys, stats = jax.block_until_ready(
            hand_gf(model.u, model.v, x, y, t1, ts, rtol, atol, pcoeff=0.0, icoeff=1.0)
        )
        return flat([a[-1] for a in ys]), f"{steps_text(stats)} steps"

    return {
        "flowgap Dopri8 (PI 0.3/0.3)": with_flowgap,
        "scipy DOP853, numpy gradient": with_scipy,
        "info: hand diffeqsolve Dopri8, I-control": with_i_control,
    }


def bench_gf_vs_scipy(cfg: Config):
    prob, model = problem(40, 200, 1e-6)
    t1, rtol, atol = cfg.plateau_t1, 1e-8, 1e-12
    ts = jnp.linspace(0.0, t1, 101)
    solvers = plateau_solvers(prob, model, t1, ts, rtol, atol)
    times = time_interleaved(solvers, cfg)
    results = {label: solve() for label, solve in solvers.items()}
    ref = scipy_gf(prob, flat(theta(model)), t1, ts, 1e-12, 1e-16)
    x, y = np.asarray(prob.inputs), np.asarray(prob.targets)

    def loss(th):
        return float(lsq_loss(np.split(th, 2), x, y))

    fg, sp = "flowgap Dopri8 (PI 0.3/0.3)", "scipy DOP853, numpy gradient"
    rows = [
        (
            label,
            f"{times[label]:.3f}",
            work,
            f"{times[label] / times[fg]:.3f}",
            f"{loss(th):.4e}",
            f"{rel_diff([th], [ref.y[:, -1]]):.2e}",
        )
        for label, (th, work) in results.items()
    ]
    rows.append(
        (
            "reference: scipy DOP853, rtol 1e-12, atol 1e-16",
            "",
            f"{ref.nfev} f-evals",
            "",
            f"{loss(ref.y[:, -1]):.4e}",
            "0",
        )
    )
    agreement = rel_diff([results[fg][0]], [results[sp][0]])
    text = "\n".join(
        [
            f"GF 40x200 from init 1e-6 (plateaus), t1 {t1:g}, rtol {rtol:g}, atol "
            f"{atol:g}, 101 saves; L(0) = {loss(flat(theta(model))):.4g}",
            table(
                [
                    "implementation",
                    "s/solve",
                    "work (acc/rej)",
                    "time vs flowgap",
                    "loss at t1",
                    "rel err vs ref",
                ],
                rows,
            ),
            "||theta_flowgap - theta_scipy|| / ||theta_scipy|| at t1 = "
            f"{agreement:.2e}",
        ]
    )
    return text, [
        verdict(
            "GF 40x200 init 1e-6: scipy DOP853 / flowgap (speed-up)",
            times[sp] / times[fg],
            ">=",
            3,
        )
    ]


def bench_call_overhead(cfg: Config):
    """Fixed cost of one warm call: GD of 100 steps, GF to t1 = 1e-3."""
    prob, model = problem(40, 200, SCALE)
    x, y, lr = prob.inputs, prob.targets, jnp.asarray(LR)
    t1, ts = jnp.asarray(1e-3), jnp.linspace(0.0, 1e-3, 101)
    rtol, atol = jnp.asarray(1e-8), jnp.asarray(1e-10)
    gf_args = (model.u, model.v, x, y, t1, ts, rtol, atol)
    times = time_interleaved(
        {
            "GD flowgap": blocking(lambda: flowgap_gd(prob, model, SAVE_EVERY)),
            "GD hand": blocking(
                lambda: hand_scan_gd(model.u, model.v, x, y, lr, SAVE_EVERY)
            ),
            "GF flowgap": blocking(lambda: flowgap_gf(prob, model, t1, ts, rtol, atol)),
            "GF hand": blocking(lambda: hand_gf(*gf_args)),
        },
        cfg,
    )
    rows = [
        (
            label,
            f"{times[kind + ' flowgap'] * 1e6:.0f}",
            f"{times[kind + ' hand'] * 1e6:.0f}",
            f"{(times[kind + ' flowgap'] - times[kind + ' hand']) * 1e6:.0f}",
        )
        for kind, label in (
            ("GD", "GD, 100 steps, 40x200"),
            ("GF", "GF, t1 1e-3, 40x200"),
        )
    ]
    return "\n".join(
        [
            "Fixed cost of one warm call (tiny runs)",
            table(["call", "flowgap us", "hand-written us", "extra us"], rows),
        ]
    )


# ------------------------------------------------------------------ 3. memory


def child(name: str, cfg: Config) -> dict:
    """One memory run (the child process's work); returns what it did."""
    prob, model = problem(100, 1000, SCALE)
    if name == "baseline":
        return {"wall_s": 0.0}
    start = time.perf_counter()
    if name == "gd-memory":
        steps = cfg.memory_gd_steps
        traj = flowgap.gradient_descent(
            prob.loss, model, lr=LR, steps=steps, save_every=steps // 1000
        )
    else:
        traj = flowgap_gf(
            prob, model, 1000.0, jnp.linspace(0, 1000.0, 1000), 1e-8, 1e-10
        )
    jax.block_until_ready(traj)
    return {
        "wall_s": time.perf_counter() - start,
        "saves": len(traj),
        "steps": int(traj.stats["num_steps"]),
        "final_loss": float(traj.final_loss),
    }


def peak_rss(name: str, cfg: Config) -> tuple[float, dict]:
    """(peak RSS in MB, the child's report) of `bench_core.py --child name`."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", name]
    out = subprocess.run(
        cmd + ["--quick"] * cfg.quick, capture_output=True, text=True, check=True
    )
    kbytes = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)[1]
    return int(kbytes) * 1024 / 1e6, json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(cfg: Config):
    runs = {
        "baseline": "imports + 100x1000 problem, no run",
        "gd-memory": f"GD 100x1000, {cfg.memory_gd_steps:.0e} steps, save_every "
        f"{cfg.memory_gd_steps // 1000}",
        "gf-memory": "GF 100x1000, t1 1000, Dopri8 1e-8/1e-10, 1,000 saves",
    }
    rows, targets = [], []
    for name, label in runs.items():
        mb, info = peak_rss(name, cfg)
        details = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in info.items()
            if k != "wall_s"
        )
        rows.append((label, f"{mb:.0f}", f"{info['wall_s']:.1f}", details))
        if name != "baseline":
            targets.append(verdict(f"memory: {name} peak RSS", mb, "<=", 500, " MB", 0))
    text = "\n".join(
        [
            "Peak RSS of separate processes (/usr/bin/time -v), MB = 1e6 bytes",
            table(["run", "peak MB", "run s", "details"], rows),
        ]
    )
    return text, targets


# ------------------------------------------------------------------- report


def machine_info() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    pkgs = ["jax", "jaxlib", "equinox", "diffrax", "numpy", "scipy", "torch"]
    return (
        f"CPU: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
    )


def append_results(
    info: str, body: str, wall: float, loads, script: str = "bench_core.py"
) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(
            "# flowgap benchmark results\n\n"
            "Sections are appended by full runs of `benchmarks/bench_core.py` "
            "(`--quick` never writes here). The script's docstring says what is "
            "measured and how the ratios are defined.\n"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as f:
        f.write(
            f"\n## {script}, {stamp}\n\n- {info}\n"
            f"- Load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f} "
            f"(other processes share the 2 cores); total run time {wall:.0f} s\n\n"
            f"```text\n{body}\n```\n"
        )


def run(cfg: Config) -> None:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info)
    if cfg.quick:
        print("QUICK MODE: small step counts, a smoke test; RESULTS.md is not written.")
    print(f"load average (1 min) at start: {load0:.2f}\n")
    sections, targets = [], []
    for bench in (bench_gd, bench_gf_vs_hand, bench_gf_vs_scipy, bench_memory):
        text, found = bench(cfg)
        print(text + "\n", flush=True)
        sections.append(text)
        targets += found
    sections.append(bench_call_overhead(cfg))
    print(sections[-1] + "\n")
    title = "Targets" + (" (QUICK MODE: not representative)" if cfg.quick else "")
    sections.append(
        title + "\n" + table(["target", "measured", "target", "result"], targets)
    )
    print(sections[-1])
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print(f"\ntotal {wall:.0f} s; load average (1 min) at end: {load1:.2f}")
    if not cfg.quick:
        append_results(info, "\n\n".join(sections), wall, (load0, load1))
        print(f"appended to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test, no RESULTS.md"
    )
    parser.add_argument(
        "--child",
        choices=["baseline", "gd-memory", "gf-memory"],
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(child(args.child, cfg)))
    else:
        run(cfg)


if __name__ == "__main__":
    main()
