import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from .._checks import positive_int
from ..experiments._output import write_npz
from ._grid import check_grid, flat_points
from ._result import SweepResult


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


def sweep(
    fn,
    grid: dict,
    *,
    chunk_size: int | None = None,
    max_memory: int | float | None = None,
    checkpoint=None,
    progress: bool = True,
) -> SweepResult:
    r"""Run `fn(**point)` over the cartesian product of `grid` as one compiled,
    vmapped program, chunk by chunk.

    `fn` builds and trains one run from traced scalars (e.g. `scale`, `lr`,
    `seed`) and returns a pytree of arrays. It is compiled once as
    `jit(vmap(fn))` for a fixed chunk size (the last chunk is padded and the
    padding dropped), so every chunk reuses the same program.

    - `chunk_size`, or `max_memory` (bytes, estimated from the compiled chunk's
      memory analysis): how many runs go in one chunk (default: all).
    - With more than one local device the chunk's run axis is sharded over all of
      them (`NamedSharding` on a 1-D mesh), and the chunk size is rounded up to a
      multiple of the device count.
    - `checkpoint`: a folder; every finished chunk is written there atomically,
      and chunks already there are loaded instead of recomputed, so an
      interrupted sweep resumes with bit-identical results.
    - A run that fails (a diverged trajectory, a NaN) only affects its own outputs;
      return e.g. `traj.result._value` as a status leaf to flag it.

    **Returns:** a `SweepResult` whose leaves have the grid's shape in front.
    """
    if not callable(fn):
        raise TypeError("`fn` must be a callable taking the grid's axes as keywords.")
    axes = check_grid(grid)
    points = flat_points(axes)
    total = len(next(iter(points.values())))
    devices = jax.local_devices()
    batched = jax.jit(jax.vmap(lambda p: fn(**p)))
    if chunk_size is None:
        size = _chunk_size(batched, points, max_memory, len(devices))
    else:
        size = positive_int("chunk_size", chunk_size)
    size = math.ceil(size / len(devices)) * len(devices)
    count = math.ceil(total / size)
    padded = {
        k: np.concatenate([v, np.repeat(v[-1:], count * size - total)])
        for k, v in points.items()
    }
    sharding = (
        NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))
        if len(devices) > 1
        else None
    )
    folder = None if checkpoint is None else pathlib.Path(checkpoint)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    treedef, outputs = None, []
    for index in tqdm(range(count), desc="sweep", unit="chunk", disable=not progress):
        path = None if folder is None else _chunk_file(folder, index)
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                leaves = [data[f"leaf{j}"] for j in range(len(data.files))]
        else:
            args = {
                k: jnp.asarray(v[index * size : (index + 1) * size])
                for k, v in padded.items()
            }
            if sharding is not None:
                args = jax.device_put(args, sharding)
            result = batched(args)
            leaves, treedef = jax.tree.flatten(result)
            leaves = [np.asarray(x) for x in leaves]
            if path is not None:
                write_npz(path, {f"leaf{j}": x for j, x in enumerate(leaves)})
        outputs.append(leaves)
    if treedef is None:  # everything came from checkpoints: recover the structure
        treedef = jax.tree.structure(
            jax.eval_shape(batched, {k: v[:size] for k, v in padded.items()})
        )
    shape = tuple(len(v) for v in axes.values())
    stacked = [
        np.concatenate(parts)[:total].reshape(shape + np.shape(parts[0])[1:])
        for parts in zip(*outputs)
    ]
    return SweepResult(axes=axes, values=jax.tree.unflatten(treedef, stacked))
