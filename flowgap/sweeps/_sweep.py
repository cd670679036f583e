import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from .._checks import positive_int
from ._batching import check_batch_size, program
from ._grid import check_grid, flat_points
from ._io import write_npz
from ._result import SweepResult


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by SIGINT/SIGTERM (or Ctrl-C) between chunks.

    - `done`, `total`: finished chunks and all chunks;
    - `checkpoint`: the folder holding the finished chunks (None if none was
      given); rerunning the same sweep with it resumes;
    - `partial`: a `SweepResult` of everything finished, with NaN (floats), -1
      (integers) or False where a run had not been computed yet.
    """

    def __init__(self, done: int, total: int, checkpoint, partial: SweepResult):
        where = f"; finished chunks are in {checkpoint}" if checkpoint else ""
        super().__init__(f"sweep interrupted after {done} of {total} chunks{where}")
        self.done, self.total = done, total
        self.checkpoint, self.partial = checkpoint, partial


def _chunk_size(batched, points, max_memory, devices):
    """Runs per chunk: all of them, or as many as fit in `max_memory` bytes by
    the compiled program's own memory analysis of a probe chunk."""
    total = len(next(iter(points.values())))
    if max_memory is None:
        return total
    probe = min(total, 8 * devices)
    args = {k: v[:probe] for k, v in points.items()}
    analysis = batched.lower(args).compile().memory_analysis()
    used = sum(
        getattr(analysis, attr, 0) or 0
        for attr in (
            "temp_size_in_bytes",
            "output_size_in_bytes",
            "argument_size_in_bytes",
        )
    )
    per_run = max(used / probe, 1.0)
    return max(1, min(total, int(max_memory // per_run)))


def _chunk_file(folder: pathlib.Path, index: int) -> pathlib.Path:
    return folder / f"chunk-{index:05d}.npz"


def _placement(mesh):
    """Put a chunk's run axis on the devices; gather it back to host numpy.

    One device (`mesh` None): plain arrays. Several (all hosts' devices when
    `jax.distributed.initialize` was called): the run axis is sharded over the
    1-D mesh, every process builds its own shards from the host-side grid, and
    the outputs are all-gathered so every process holds the whole chunk.
    """
    if mesh is None:
        return jnp.asarray, np.asarray
    sharding = NamedSharding(mesh, PartitionSpec("runs"))

    def put(values: np.ndarray):
        return jax.make_array_from_callback(
            values.shape, sharding, lambda index: values[index]
        )

    def get(array):
        if jax.process_count() == 1:
            return np.asarray(array)
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))

    return put, get


def sweep(
    fn,
    grid,
    *,
    chunk_size: int | None = None,
    max_memory: int | float | None = None,
    batch_size: int | str | None = None,
    checkpoint=None,
    progress: bool = True,
) -> SweepResult:
    r"""Run `fn(**point)` over the cartesian product of `grid` as one compiled
    program per chunk of runs.

    `fn` builds and trains one run from traced scalars (e.g. `scale`, `lr`,
    `seed`) and returns a pytree of arrays. It is compiled once for a fixed chunk
    size (the last chunk padded, the padding dropped): every chunk reuses it.

    - `chunk_size`, or `max_memory` (bytes, extrapolated linearly from the
      compiled memory analysis of a probe chunk): how many runs go in one chunk
      (default: all). Each chunk is one call of the program, and the unit of
      checkpointing and of Ctrl-C.
    - `batch_size`: how many runs of a device's share of the chunk are solved
      together, vmapped, in lock-step: `"all"`, the whole share in one
      `vmap(fn)`; an int $b$, sequential groups of at most $b$ runs (`lax.map`
      over vmapped groups, the fewest, as equal as possible; $b = 1$ runs each
      point as the solo program); None (default), `default_batch_size()`: 1 on
      CPU, `"all"` on GPU/TPU. Lock-step makes every adaptive solve in a group
      take the slowest run's steps, and on a CPU vmapped solves cost more per
      run than solo ones: a 256-run `gradient_flow` sweep (40 x 200) costs
      3-4x a solo run per run as one vmap on a 2-core CPU, 0.9x with $b = 1$.
    - With more than one device the chunk's run axis is sharded over all of them
      (`shard_map` on a 1-D mesh of `jax.devices()`; each device batches its own
      share as above), and the chunk size is rounded up to a multiple of the
      device count. After `jax.distributed.initialize(...)` that is every device
      of every process: each process calls `sweep` with the same arguments and
      gets the whole result (see docs/sweeps.md, "Several hosts").
    - `checkpoint`: a folder; every finished chunk is written there atomically
      (by process 0), and chunks already there are loaded instead of recomputed,
      so an interrupted sweep resumes with bit-identical results (given the same
      chunk size, `batch_size` and device count, hence the same program).
    - A failed run (a diverged trajectory, a NaN) only affects its own outputs;
      flag it by returning e.g. `flowgap.dynamics.status_code(traj.result)`.
    - Ctrl-C / SIGINT (and SIGTERM where the caller maps it to KeyboardInterrupt,
      as the CLI does) raises `SweepInterrupted`, which carries the partial result.

    Results do not depend on `batch_size`, the chunk size or the device count
    beyond round-off: each run's arithmetic is the same, but XLA may fuse or
    reassociate a group's batched operations differently for another group size
    (measured on gradient flows: 1e-14 relative, with the same accepted steps).
    Runs in groups of one size give identical bits, whatever the layout; groups
    of one give the bits of `jax.jit(fn)` alone.

    **Returns:** a `SweepResult` whose leaves have the grid's shape in front.
    """
    axes, points, batch_size = _check_arguments(fn, grid, batch_size)
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("runs",)) if len(devices) > 1 else None
    batched = program(fn, batch_size, mesh)
    size = _runs_per_chunk(batched, points, chunk_size, max_memory, len(devices))
    return _run_chunks(batched, mesh, axes, points, size, checkpoint, progress)


def _check_arguments(fn, grid, batch_size):
    """(axes, flattened grid points, resolved `batch_size`), or the error naming
    the bad argument."""
    if not callable(fn):
        raise TypeError("`fn` must be a callable taking the grid's axes as keywords.")
    axes = check_grid(grid)
    return axes, flat_points(axes), check_batch_size(batch_size)


def _runs_per_chunk(batched, points, chunk_size, max_memory, devices: int) -> int:
    """`chunk_size` (or the size `max_memory` allows) rounded up to a multiple of
    the device count, so every device gets an equal share of each chunk."""
    if chunk_size is None:
        size = _chunk_size(batched, points, max_memory, devices)
    else:
        size = positive_int("chunk_size", chunk_size)
    return math.ceil(size / devices) * devices


def _run_chunks(batched, mesh, axes, points, size, checkpoint, progress):
    """Every chunk computed (or loaded from `checkpoint`) in turn and assembled;
    Ctrl-C raises `SweepInterrupted` carrying the chunks finished so far."""
    total = len(next(iter(points.values())))
    chunks = _padded_chunks(points, size)
    put, get = _placement(mesh)
    folder, writer = _checkpoint_folder(checkpoint)
    shapes = jax.eval_shape(batched, chunks[0])
    treedef = jax.tree.structure(shapes)
    outputs = []
    try:
        for index in tqdm(
            range(len(chunks)), desc="sweep", unit="chunk", disable=not progress
        ):
            path = None if folder is None else _chunk_file(folder, index)
            outputs.append(
                _chunk_leaves(batched, chunks[index], path, put, get, writer)
            )
    except KeyboardInterrupt:
        partial = _assemble(axes, treedef, jax.tree.leaves(shapes), outputs, total)
        raise SweepInterrupted(len(outputs), len(chunks), folder, partial) from None
    return _assemble(axes, treedef, jax.tree.leaves(shapes), outputs, total)


def _padded_chunks(points, size: int) -> list[dict]:
    """The grid points cut into chunks of `size` runs; the last is padded by
    repeating the last point, so every chunk has the shape the program was
    compiled for."""
    total = len(next(iter(points.values())))
    count = math.ceil(total / size)
    padded = {
        k: np.concatenate([v, np.repeat(v[-1:], count * size - total)])
        for k, v in points.items()
    }
    return [
        {k: v[index * size : (index + 1) * size] for k, v in padded.items()}
        for index in range(count)
    ]


def _checkpoint_folder(checkpoint) -> tuple[pathlib.Path | None, bool]:
    """(folder, whether this process writes there); only process 0 writes, so
    several hosts never race on one file."""
    folder = None if checkpoint is None else pathlib.Path(checkpoint)
    writer = folder is not None and jax.process_index() == 0
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
    return folder, writer


def _chunk_leaves(batched, args, path, put, get, writer: bool) -> list[np.ndarray]:
    """One chunk's output leaves: read from its checkpoint file when one exists,
    else computed on the devices (and written there by the writing process)."""
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as data:
            return [data[f"leaf{j}"] for j in range(len(data.files))]
    outputs = batched({k: put(v) for k, v in args.items()})
    leaves = [get(x) for x in jax.tree.leaves(outputs)]
    if writer:
        write_npz(path, {f"leaf{j}": x for j, x in enumerate(leaves)})
    return leaves


def _missing(shape) -> np.ndarray:
    dtype = np.dtype(shape.dtype)
    if dtype == np.bool_:
        return np.zeros(shape.shape, dtype)
    fill = np.nan if np.issubdtype(dtype, np.inexact) else -1
    return np.full(shape.shape, fill, dtype)


def _assemble(axes, treedef, shapes, outputs, total) -> SweepResult:
    """Stack finished chunks into the grid's shape; runs not finished are NaN/-1."""
    grid_shape = tuple(len(v) for v in axes.values())
    chunks = outputs + [[_missing(s) for s in shapes]] * (
        math.ceil(total / shapes[0].shape[0]) - len(outputs) if shapes else 0
    )
    stacked = [
        np.concatenate(parts)[:total].reshape(grid_shape + np.shape(parts[0])[1:])
        for parts in zip(*chunks)
    ]
    return SweepResult(axes=axes, values=jax.tree.unflatten(treedef, stacked))
