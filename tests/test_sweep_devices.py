"""Sweeps sharded over 4 forced CPU devices, and over two processes joined by
`jax.distributed.initialize`, against the single-device sweep. Each case runs
`tests/sweep_worker.py` in a fresh process, since the device count is fixed
when JAX starts."""

import socket
import subprocess
import sys

import numpy as np
import pytest

from flowgap import RESULTS
from flowgap.sweeps import load_sweep

WORKER = __file__.replace("test_sweep_devices.py", "sweep_worker.py")
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
    """One device, one chunk of all 27 runs; and one device in chunks of 2."""
    folder = tmp_path_factory.mktemp("single")
    return _sweep(folder / "whole"), _sweep(folder / "pairs", "--chunk-size", 2)


def _equal_to_rounding(a, b):
    # vmapped batches of different sizes may reassociate the batched matvecs:
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
    # chunks of 8 over 4 devices: each device runs batches of 2, as `pairs` did
    same_batches = _sweep(tmp_path / "four8", "--devices", 4, "--chunk-size", 8)
    for name in ("loss", "error", "status"):
        assert same_batches.values[name].tobytes() == pairs.values[name].tobytes()
    # chunked equals unchunked on the sharded machine too
    _equal_to_rounding(same_batches, sharded)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(single, tmp_path):
    whole, pairs = single
    port = _free_port()
    out = tmp_path / "multi"
    common = ("--devices", 2, "--num-processes", 2, "--port", port)
    workers = [_start(out, *common, "--process-id", i) for i in (0, 1)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output
    for i in (0, 1):  # every process holds the gathered result
        gathered = load_sweep(f"{out}.{i}.npz")
        _labelled_and_flagged(gathered)
        _equal_to_rounding(gathered, whole)
    gathered = load_sweep(f"{out}.0.npz")
    # 27 runs padded to 28 over 4 devices: batches of 7, unlike `pairs`; so
    # equality is to rounding, checked above
    assert gathered.values["loss"].shape == (3, 3, 3)
