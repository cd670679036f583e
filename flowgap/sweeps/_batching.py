"""One chunk of runs as one compiled program: on each device, its share of the
runs either all in lock-step (`vmap`), in sequential groups of vmapped runs, or
each alone (`lax.map`)."""

import weakref

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec


def default_batch_size(backend: str | None = None) -> int | str:
    """The `batch_size` a sweep uses when given none: 1 on CPU, `"all"` on GPU
    and TPU (`backend` defaults to `jax.default_backend()`).

    Why: runs vmapped together step in lock-step, so every adaptive solve (a
    `gradient_flow`, whose PID controller picks each run's steps) takes as many
    steps as the slowest run of its group, finished runs computing masked-out
    steps. A GPU runs a whole group's step in about the time of one run's, so one
    large group is fastest there. On a CPU, once a run's step is flop-bound, a
    group's step costs at least the sum of its runs' steps, and a vmapped Diffrax
    solve measured more than that (2-core CPU, 40 x 200 sparse recovery: 1.4x a
    solo run per run for 16 identical runs, 2.2x for 2, so no lock-step waste at
    all). So on CPU each run goes alone, one after another in one compiled loop:
    no recompiles, no per-call dispatch, at most the cost of solo runs. Tiny
    fixed-step runs (GD at 10 x 20) are overhead-bound and run about twice as
    fast in one vmap: pass `batch_size="all"` (or a group size) for those; see
    benchmarks/bench_sweep.py.
    """
    backend = jax.default_backend() if backend is None else backend
    return 1 if backend == "cpu" else "all"


def check_batch_size(batch_size) -> int | str:
    """`batch_size` resolved: `"all"` or a positive int (None: the default)."""
    if batch_size is None:
        return default_batch_size()
    if isinstance(batch_size, str) and batch_size == "all":
        return "all"
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            f'`batch_size` must be a positive integer, "all" or None; '
            f"got {batch_size!r}."
        )
    return batch_size


def groups(runs: int, batch_size: int | str) -> tuple[int, int]:
    """`(count, size)`: `runs` split into the fewest groups of at most
    `batch_size`, as equal as possible (`count * size - runs < count` runs of
    padding)."""
    if batch_size == "all" or batch_size >= runs:
        return 1, runs
    count = -(-runs // batch_size)
    return count, -(-runs // count)


def _pad(x, extra: int):
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x


def per_device(fn, batch_size: int | str):
    """The program one device runs on its share of a chunk, `{axis: (runs,)}` →
    outputs with a leading `runs` axis.

    `batch_size` 1: `lax.map(fn)`, so every run is the solo program. One group:
    `vmap(fn)`, the lock-step program. Several groups of `size`: `lax.map` over
    them, each group `vmap(fn)`; the share is padded by repeating its last run to
    `count * size` inside the program, so `fn` is traced once (where
    `lax.map(..., batch_size=...)` would trace it again for a remainder).
    """

    def run(point):
        return fn(**point)

    def local(points):
        if batch_size == 1:
            return jax.lax.map(run, points)
        runs = next(iter(points.values())).shape[0]
        count, size = groups(runs, batch_size)
        if count == 1:
            return jax.vmap(run)(points)
        grouped = jax.tree.map(
            lambda x: _pad(x, count * size - runs).reshape(count, size, *x.shape[1:]),
            points,
        )
        out = jax.lax.map(jax.vmap(run), grouped)
        return jax.tree.map(lambda y: y.reshape(count * size, *y.shape[2:])[:runs], out)

    return local


_PROGRAMS = weakref.WeakKeyDictionary()


def program(fn, batch_size: int | str, mesh: Mesh | None):
    """`jit` of the chunk program, kept per `(fn, batch_size, mesh)`, so sweeping
    the same function again (another grid of the same chunk size) reuses it.

    With a `mesh`, the chunk's run axis is split over its `"runs"` axis by
    `shard_map`: each device runs `per_device` on its own share, and runs never
    talk to each other, so adaptive solver loops stay local to a device.
    """
    try:
        cache = _PROGRAMS.setdefault(fn, {})
    except TypeError:  # not weakly referenceable: no cache
        cache = {}
    key = (batch_size, mesh)
    if key not in cache:
        local = per_device(fn, batch_size)
        if mesh is not None:
            spec = PartitionSpec("runs")
            # check_vma=False: `fn` is arbitrary user code (callbacks, custom
            # primitives) and its outputs are per-run by construction
            local = jax.shard_map(
                local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
            )
        cache[key] = jax.jit(local)
    return cache[key]
