r"""Sharpness from Hessian–vector products: `flowgap.analysis.sharpness` and
`track_sharpness` against scipy's ARPACK (`scipy.sparse.linalg.eigsh`, as the
edge-of-stability reference code calls it) at the same tolerance.

Run: `.venv/bin/python benchmarks/bench_curvature.py [--quick]`. A full run
prints the tables and appends them, with the date, machine and load, to
`benchmarks/RESULTS.md`; `--quick` (one timing round, short samples) only prints.

Problem: `problems.teacher_student(k1, n=64, d=2, teacher_width=4,
activation="tanh")` and `models.MLP(2, 16, 1, depth=2, activation="tanh", key=k2)`
(D = 337 parameters), (k1, k2) split from `key(0)`; half mean squared error,
float64. Truth: the eigenvalues of the dense Hessian (`jax.hessian`, then
`numpy.linalg.eigvalsh`).

Methods, all from the same start vector (`normal(key(0), (D,))`, the default of
`sharpness`):
- flowgap: `sharpness(loss, model, tol=tol, return_info=True)`: Lanczos with full
  reorthogonalisation, stopped once ‖Hy − θy‖ ≤ tol·|θ| for the top Ritz pair;
  `num_hvps` counts its Hessian–vector products. One compiled program for every
  parameter value, data set, key and tol.
- eigsh: `eigsh(LinearOperator(matvec=hvp), k=1, which="LA", tol=tol, v0=start)`
  with `hvp` a `jax.jit`-ed jvp of the gradient (compiled once, before timing);
  ARPACK's test is the same, ‖r‖ ≤ tol·|θ|, and its products are counted in
  the matvec.
- info rows: the code path of `sharpness` before this benchmark's change (min(D,
  64) = 64 Lanczos steps, no convergence test, run eagerly, so that each call
  traces and compiles again), and the same 64 steps under `jax.jit` (what a user
  got by wrapping the call).
"HVPs" and "error" = |θ − λ_max| / λ_max are per call.

Tracking: GD at η = 0.1 for 200 steps, saved every 10 (21 saves);
`track_sharpness(loss, gd, tol=tol)` (one compiled scan, each save warm-started
from the previous eigenvector) against eigsh called save by save, cold (the
fixed start, as the reference code) and warm (v0 = the previous eigenvector).

Timing: `bench_core.time_interleaved` (one warm-up call, then `rounds` rounds
that interleave the methods, each sample repeated to at least `min_sample` s;
the minimum). First-call seconds (tracing + XLA compile + run) are single
measurements on a fresh process's first call. XLA compiles inside the timed
calls are counted (jax.monitoring); they should be 0 for flowgap. The machine
is shared: timings are minima, and the load average is printed.
"""

import os

# numpy/scipy's OpenBLAS on one thread, set before numpy loads (as in
# bench_flow.py): ARPACK's BLAS calls are on vectors of 337 entries, and a second
# spinning thread only fights the load of this shared 2-core machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg  # noqa: E402
from bench_core import append_results, table, time_interleaved  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import flowgap  # noqa: E402
from flowgap import analysis, models, problems  # noqa: E402

jax.config.update("jax_enable_x64", True)

TOLS = (1e-4, 1e-6, 1e-8, 1e-10)
TOL = 1e-8  # the timed tolerance


@dataclass(frozen=True)
class Config:
    quick: bool
    min_sample: float  # seconds per timing sample (read by time_interleaved)
    rounds: int
    eager_calls: int  # calls of the eager 0.1 path (each one compiles)


FULL = Config(quick=False, min_sample=0.5, rounds=5, eager_calls=3)
QUICK = Config(quick=True, min_sample=0.05, rounds=1, eager_calls=1)


class Compiles:
    """Counts XLA compiles (jax.monitoring's backend-compile events)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **_):
        self.count += event == "/jax/core/compile/backend_compile_duration"


def machine_info() -> str:
    pkgs = ["jax", "jaxlib", "equinox", "numpy", "scipy"]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
    )


def setup():
    kp, km = jax.random.split(jax.random.key(0))
    problem = problems.teacher_student(
        kp, n=64, d=2, teacher_width=4, activation="tanh"
    )
    net = models.MLP(2, 16, 1, depth=2, activation="tanh", key=km)
    return problem, net


def flat_loss(loss, model):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = ravel_pytree(params)
    return theta, lambda t: loss(eqx.combine(unravel(t), static))


@eqx.filter_jit
def top_eigenvalue(loss, model):
    """λ_max of the dense Hessian (the truth)."""
    theta, value = flat_loss(loss, model)
    return jnp.linalg.eigvalsh(jax.hessian(value)(theta))[-1]


class Eigsh:
    """scipy's eigsh on a jitted Hessian–vector product at any θ of the model's
    shape, counting the products."""

    def __init__(self, loss, model):
        self.theta, value = flat_loss(loss, model)
        self.hvp = jax.jit(lambda t, v: jax.jvp(jax.grad(value), (t,), (v,))[1])
        self.start = np.asarray(jax.random.normal(jax.random.key(0), self.theta.shape))

    def __call__(self, tol, *, theta=None, v0=None):
        """(λ_max, its eigenvector, products used) at θ (default: the model's)."""
        theta = self.theta if theta is None else theta
        calls = []

        def matvec(v):
            calls.append(1)
            return np.asarray(self.hvp(theta, jnp.asarray(v)))

        dim = theta.shape[0]
        operator = scipy.sparse.linalg.LinearOperator(
            (dim, dim), matvec=matvec, dtype=np.float64
        )
        start = self.start if v0 is None else v0
        values, vectors = scipy.sparse.linalg.eigsh(
            operator, k=1, which="LA", tol=tol, v0=start
        )
        return float(values[0]), vectors[:, 0], len(calls)


def eager_fixed_steps(loss, model):
    """The path of `sharpness` before the change: min(D, 64) Lanczos steps,
    eagerly (a new closure per call, so its scan compiles each call)."""
    theta, value = flat_loss(loss, model)
    grad = jax.grad(value)
    start = jax.random.normal(jax.random.key(0), theta.shape)
    steps = min(theta.shape[0], 64)
    values, _ = analysis.lanczos(
        lambda v: jax.jvp(grad, (theta,), (v,))[1], start, steps
    )
    return values[-1]


@eqx.filter_jit
def jitted_fixed_steps(loss, model):
    return eager_fixed_steps(loss, model)


def rel(value, truth) -> str:
    return f"{abs(float(value) - truth) / abs(truth):.1e}"


def accuracy_section(problem, net, truth, eigsh, emit):
    """HVPs and errors of both methods on a ladder of tolerances."""
    rows = []
    for tol in TOLS:
        value, info = analysis.sharpness(problem.loss, net, tol=tol, return_info=True)
        theirs, _, calls = eigsh(tol)
        ours = int(info.num_hvps)
        rows.append(
            (
                f"{tol:g}",
                ours,
                rel(value, truth),
                calls,
                rel(theirs, truth),
                f"{ours / calls:.2f}",
            )
        )
    emit(
        "One point: HVPs per call and error |theta - lambda_max| / lambda_max, "
        "same start vector, same relative residual test",
        table(
            ("tol", "flowgap HVPs", "error", "eigsh HVPs", "error", "HVP ratio"),
            rows,
        ),
    )
    return rows


def timing_section(problem, net, truth, eigsh, cfg, compiles, emit):
    """First-call and warm seconds at TOL."""
    before = compiles.count
    start = time.perf_counter()
    jax.block_until_ready(analysis.sharpness(problem.loss, net, tol=TOL))
    first = time.perf_counter() - start
    first_compiles = compiles.count - before
    fresh = Eigsh(problem.loss, net)
    start = time.perf_counter()
    fresh(TOL)
    eigsh_first = time.perf_counter() - start
    eager = []
    for _ in range(cfg.eager_calls):
        start = time.perf_counter()
        jax.block_until_ready(eager_fixed_steps(problem.loss, net))
        eager.append(time.perf_counter() - start)
    start = time.perf_counter()
    jitted_value = jitted_fixed_steps(problem.loss, net)
    jax.block_until_ready(jitted_value)
    jitted_first = time.perf_counter() - start

    fns = {
        "flowgap": lambda: jax.block_until_ready(
            analysis.sharpness(problem.loss, net, tol=TOL)
        ),
        "eigsh": lambda: eigsh(TOL),
        "jit64": lambda: jax.block_until_ready(jitted_fixed_steps(problem.loss, net)),
    }
    for fn in fns.values():
        fn()
    before = compiles.count
    best = time_interleaved(fns, cfg)
    timed_compiles = compiles.count - before
    _, info = analysis.sharpness(problem.loss, net, tol=TOL, return_info=True)
    calls = eigsh(TOL)[2]
    ms = {name: 1e3 * seconds for name, seconds in best.items()}
    rows = [
        (
            "flowgap sharpness",
            f"tol {TOL:g}",
            int(info.num_hvps),
            f"{first:.2f}",
            f"{ms['flowgap']:.2f}",
            f"{ms['flowgap'] / ms['eigsh']:.2f}",
        ),
        (
            "scipy eigsh, jitted HVP",
            f"tol {TOL:g}",
            calls,
            f"{eigsh_first:.2f}",
            f"{ms['eigsh']:.2f}",
            "1.00",
        ),
        (
            "info: before, eager 64 steps",
            "no test",
            64,
            f"{min(eager):.2f}",
            f"{1e3 * min(eager):.0f} (compiles)",
            f"{1e3 * min(eager) / ms['eigsh']:.0f}",
        ),
        (
            "info: before, under jax.jit",
            "no test",
            64,
            f"{jitted_first:.2f}",
            f"{ms['jit64']:.2f}",
            f"{ms['jit64'] / ms['eigsh']:.2f}",
        ),
    ]
    emit(
        f"tanh MLP 2-16-16-1 (D = {eigsh.theta.shape[0]}) on n = 64 points, "
        f"lambda_max = {truth:.6f} (dense Hessian). Time per call (warm: minimum "
        "over interleaved samples; first call: tracing + compile + run)",
        table(
            ("method", "setting", "HVPs", "first call s", "warm ms", "vs eigsh"),
            rows,
        ),
        f"XLA compiles: flowgap first call {first_compiles}, inside timed calls "
        f"{timed_compiles}; eager 0.1 path per call: "
        + ", ".join(f"{s:.2f}" for s in eager)
        + " s",
    )
    return ms, int(info.num_hvps), calls


def tracking_section(problem, net, eigsh, cfg, compiles, emit):
    """track_sharpness over the saves of a GD run against eigsh save by save."""
    gd = flowgap.gradient_descent(problem.loss, net, lr=0.1, steps=200, save_every=10)
    saves = len(gd)
    truths = np.array(
        [float(top_eigenvalue(problem.loss, gd[i])) for i in range(saves)]
    )
    thetas = [flat_loss(problem.loss, gd[i])[0] for i in range(saves)]

    def track():
        return analysis.track_sharpness(problem.loss, gd, tol=TOL, return_info=True)

    start = time.perf_counter()
    jax.block_until_ready(track())
    first = time.perf_counter() - start

    def eigsh_along(warm: bool):
        values, total, v0 = [], 0, None
        for theta in thetas:
            value, vector, calls = eigsh(TOL, theta=theta, v0=v0)
            values.append(value)
            total += calls
            v0 = vector if warm else None
        return np.array(values), total

    fns = {
        "flowgap": lambda: jax.block_until_ready(track()),
        "cold": lambda: eigsh_along(False),
        "warm": lambda: eigsh_along(True),
    }
    before = compiles.count
    best = time_interleaved(fns, cfg)
    timed_compiles = compiles.count - before
    ours, info = track()
    cold, cold_calls = eigsh_along(False)
    warm, warm_calls = eigsh_along(True)

    def error(values):
        return f"{np.max(np.abs(np.asarray(values) - truths) / truths):.1e}"

    ms = {name: 1e3 * seconds for name, seconds in best.items()}
    hvps = int(np.sum(info.num_hvps))
    rows = [
        (
            "flowgap track_sharpness",
            hvps,
            error(ours),
            f"{first:.2f}",
            f"{ms['flowgap']:.1f}",
            f"{ms['flowgap'] / ms['warm']:.2f}",
        ),
        (
            "eigsh per save, cold",
            cold_calls,
            error(cold),
            "-",
            f"{ms['cold']:.1f}",
            f"{ms['cold'] / ms['warm']:.2f}",
        ),
        (
            "eigsh per save, warm",
            warm_calls,
            error(warm),
            "-",
            f"{ms['warm']:.1f}",
            "1.00",
        ),
    ]
    emit(
        "",
        f"Tracking: GD eta 0.1, 200 steps, {saves} saves (lambda_max "
        f"{truths[0]:.3f} -> {truths[-1]:.3f}); tol {TOL:g}; HVPs summed over saves; "
        "error = max over saves",
        table(
            ("method", "HVPs", "error", "first call s", "warm ms", "vs eigsh warm"),
            rows,
        ),
        f"flowgap HVPs per save: {', '.join(str(int(n)) for n in info.num_hvps)}; "
        f"XLA compiles inside timed calls: {timed_compiles}",
    )
    return ms, hvps, warm_calls


def run(cfg: Config) -> None:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info)
    if cfg.quick:
        print("QUICK MODE: one timing round; RESULTS.md is not written.")
    print(f"load average (1 min) at start: {load0:.2f}\n")
    compiles = Compiles()
    lines = []

    def emit(*new):
        print(*new, sep="\n", flush=True)
        lines.extend(new)

    problem, net = setup()
    # the timing section measures the first call of `sharpness`: nothing before
    # it may compile that program (the accuracy ladder runs after it)
    eigsh = Eigsh(problem.loss, net)
    truth = float(top_eigenvalue(problem.loss, net))
    ms, ours, theirs = timing_section(problem, net, truth, eigsh, cfg, compiles, emit)
    emit("")
    accuracy_section(problem, net, truth, eigsh, emit)
    track_ms, track_hvps, track_calls = tracking_section(
        problem, net, eigsh, cfg, compiles, emit
    )
    targets = [
        (
            "HVPs, one point",
            f"{ours}/{theirs} = {ours / theirs:.2f}",
            "<= 2",
            ours <= 2 * theirs,
        ),
        (
            "warm time vs eigsh",
            f"{ms['flowgap'] / ms['eigsh']:.2f}",
            "<= 1",
            ms["flowgap"] <= ms["eigsh"],
        ),
        (
            "HVPs, tracking vs warm eigsh",
            f"{track_hvps}/{track_calls} = {track_hvps / track_calls:.2f}",
            "<= 2",
            track_hvps <= 2 * track_calls,
        ),
        (
            "tracking time vs warm eigsh",
            f"{track_ms['flowgap'] / track_ms['warm']:.2f}",
            "<= 1",
            track_ms["flowgap"] <= track_ms["warm"],
        ),
    ]
    title = "Targets" + (" (QUICK MODE: not representative)" if cfg.quick else "")
    emit(
        "",
        title,
        table(
            ("target", "measured", "target", "result"),
            [(a, b, c, "PASS" if ok else "MISS") for a, b, c, ok in targets],
        ),
    )
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print(f"\ntotal {wall:.0f} s; load average (1 min) at end: {load1:.2f}")
    if not cfg.quick:
        append_results(
            f"{info}; command: `.venv/bin/python benchmarks/bench_curvature.py`",
            "\n".join(lines),
            wall,
            (load0, load1),
            "bench_curvature.py",
        )
        print("appended to benchmarks/RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short, no RESULTS.md")
    run(QUICK if parser.parse_args().quick else FULL)


if __name__ == "__main__":
    main()
