"""Sweeps sharded over 4 forced CPU devices, and over two processes joined by
`jax.distributed.initialize`, against the single-device sweep, with each device
running its share in lock-step or in groups (`batch_size`). Each case runs
`tests/sweep_worker.py`'s sweep in a fresh process, since the device count is
fixed when JAX starts."""

import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from flowgap import RESULTS
from flowgap.sweeps import load_sweep

WORKER = __file__.replace("test_sweep_devices.py", "sweep_worker.py")
# sweep_worker.py's sweep with a batch_size: `-c GROUPED DEVICES OUT` then
# (chunk_size, batch_size) pairs, saved as OUT.0.npz, OUT.1.npz, ...
GROUPED = """
import os, sys
devices, out, cases = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_enable_x64", True)
from sweep_worker import GRID, run
from flowgap.sweeps import sweep
assert len(jax.devices()) == devices
for i, (chunk, batch) in enumerate(zip(cases[::2], cases[1::2])):
    chunk = None if chunk == "none" else int(chunk)
    batch = batch if batch == "all" else int(batch)
    result = sweep(run, GRID, chunk_size=chunk, batch_size=batch, progress=False)
    result.save(f"{out}.{i}.npz")
"""
GRID = {"scale": [0.01, 0.1, 1.0], "lr": [0.01, 0.05, 2.0], "seed": [0, 1, 2]}


def _start(out, *args):
    return subprocess.Popen(
        [sys.executable, WORKER, str(out), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _sweep(out, *args):
    process = _start(out, *args)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return load_sweep(f"{out}.0.npz")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One device, one chunk of all 27 runs; and one device in chunks of 2. The
    default batch_size on CPU is 1: every run is the solo program."""
    folder = tmp_path_factory.mktemp("single")
    return _sweep(folder / "whole"), _sweep(folder / "pairs", "--chunk-size", 2)


def _equal_to_rounding(a, b):
    # vmapped groups of different sizes may reassociate the batched matvecs:
    # float64 round-off accumulated over 200 steps stays far below 1e-12
    for name in ("loss", "error"):
        finite = np.isfinite(a.values[name])
        assert np.array_equal(finite, np.isfinite(b.values[name]))
        assert np.allclose(
            a.values[name][finite], b.values[name][finite], rtol=1e-12, atol=0
        )
    assert np.array_equal(a.values["status"], b.values["status"])


def _labelled_and_flagged(result):
    assert list(result.axes) == list(GRID)
    for name, values in GRID.items():
        assert np.array_equal(result.axes[name], values)
    diverged = RESULTS.diverged._value
    assert np.all(result.values["status"][:, 2] == diverged)  # exactly lr = 2.0
    assert np.all(result.values["status"][:, :2] == 0)
    assert np.all(np.isfinite(result.values["error"][:, :2]))


def test_four_devices_equal_one(single, tmp_path):
    whole, pairs = single
    sharded = _sweep(tmp_path / "four", "--devices", 4)
    _labelled_and_flagged(sharded)
    _equal_to_rounding(sharded, whole)
    # chunks of 8 over 4 devices: each device runs 2 runs, as `pairs` did, each
    # alone (the CPU default): the same program, so the same bits
    same_batches = _sweep(tmp_path / "four8", "--devices", 4, "--chunk-size", 8)
    for name in ("loss", "error", "status"):
        assert same_batches.values[name].tobytes() == pairs.values[name].tobytes()
        assert sharded.values[name].tobytes() == whole.values[name].tobytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Another process may take the port between `_free_port` closing it and the
# coordinator binding it; such a start is retried on a new port.
_PORT_TAKEN = re.compile(r"(?i)address already in use|failed to bind|bind failed")


def _run_two_workers(out) -> None:
    for attempt in range(3):
        common = ("--devices", 2, "--num-processes", 2, "--port", _free_port())
        workers = [_start(out, *common, "--process-id", i) for i in (0, 1)]
        outputs = [w.communicate(timeout=300)[0] for w in workers]
        if all(w.returncode == 0 for w in workers):
            return
        if attempt == 2 or not any(_PORT_TAKEN.search(o) for o in outputs):
            raise AssertionError("\n".join(outputs))


def test_two_processes_equal_one(single, tmp_path):
    whole, pairs = single
    out = tmp_path / "multi"
    _run_two_workers(out)
    for i in (0, 1):  # every process holds the gathered result
        gathered = load_sweep(f"{out}.{i}.npz")
        _labelled_and_flagged(gathered)
        _equal_to_rounding(gathered, whole)
    gathered = load_sweep(f"{out}.0.npz")
    assert gathered.values["loss"].shape == (3, 3, 3)
    for name in ("loss", "error", "status"):  # every run alone, in every layout
        assert gathered.values[name].tobytes() == whole.values[name].tobytes()


def _grouped(out, devices, *cases):
    return subprocess.Popen(
        [sys.executable, "-c", GROUPED, str(devices), str(out), *map(str, cases)],
        cwd=pathlib.Path(WORKER).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_four_devices_in_groups(single, tmp_path):
    whole, _ = single
    process = _grouped(tmp_path / "four", 4, "none", 3, 8, "all")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    groups, lockstep = (load_sweep(tmp_path / f"four.{i}.npz") for i in (0, 1))
    # groups: 28 runs, 7 a device in 3 vmapped groups of 3 (2 padded) under
    # lax.map; lockstep: chunks of 8, 2 a device in one vmap. Runs alone in
    # `whole`: equal to rounding
    for result in (groups, lockstep):
        _labelled_and_flagged(result)
        _equal_to_rounding(result, whole)
