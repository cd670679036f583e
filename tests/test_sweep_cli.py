"""`flowgap sweep`: labelled results, a heat map, and a run folder that survives
SIGTERM/SIGINT and resumes to the bit-identical result."""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flowgap._cli import main
from flowgap.experiments import EXPERIMENTS, SweepRun
from flowgap.experiments._settings import resolve
from flowgap.sweeps import load_sweep

# 24 chunks of one run each, so a signal lands while most are still to do
ARGS = [
    "sweep",
    "step-vs-flow",
    "--quick",
    "--grid",
    "scale=1e-3:1:6:log",
    "--grid",
    "lr=0.02,0.05,0.1,0.5",
    "--chunk-size",
    "1",
    "--no-progress",
]


# `flowgap sweep` whose chunk writer, once the first chunk is written, marks the
# folder before the second and waits for the test's signal.
PAUSE_AFTER_FIRST_CHUNK = """
import pathlib, sys, time
import flowgap.sweeps._sweep as sweep_module
from flowgap._cli import main

write = sweep_module.write_npz

def pause_before_second(path, arrays):
    if pathlib.Path(path).name == "chunk-00001.npz":
        (pathlib.Path(path).parent / "paused").touch()
        time.sleep(600)
    write(path, arrays)

sweep_module.write_npz = pause_before_second
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert main([*ARGS, "--out", str(folder)]) == 0
    return folder


def _arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_labelled_grid_summary_and_figure(reference, capsys):
    result = load_sweep(reference / "sweep.npz")
    assert list(result.axes) == ["scale", "lr", "seed"]
    assert np.allclose(result.axes["scale"], np.geomspace(1e-3, 1, 6), rtol=1e-15)
    assert np.array_equal(result.axes["lr"], [0.02, 0.05, 0.1, 0.5])
    assert result.values["gap"].shape == (6, 4, 1)
    # every run ends at the horizon t1 = 4 of --quick, whatever its lr
    assert np.allclose(result.values["time"], 4.0, rtol=1e-15, atol=0)
    # lr = 0.5 diverges at α = 1 (a failed run); at smaller α it runs to T but
    # leaves the flow, as lr = 0.1 does at α = 1: succeeded, and flagged apart
    failed = result.values["status"] != 0
    assert np.array_equal(np.nonzero(failed[..., 0]), [[5], [3]])
    left = (result.values["left_flow"] != 0) & ~failed
    assert np.all(left[:5, 3]) and left[5, 2] and np.sum(left) == 6
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["failed"] == [[0, 0, 0, 0]] * 5 + [[0, 0, 0, 1]]
    assert summary["flagged"] == [[0, 0, 0, 1]] * 5 + [[0, 0, 1, 0]]
    assert summary["mean"][5][3] is None and summary["flag"] == "left_flow"
    assert "T = 4" in summary["context"]
    # each cell is the run at its own coordinates (vmapped vs solo: round-off)
    experiment = EXPERIMENTS["step-vs-flow"]
    settings = experiment.sweep.settings_for(
        resolve(experiment.settings, experiment.quick), {"lr": result.axes["lr"]}
    )
    sweepable = experiment.sweep
    table = SweepRun(
        "step-vs-flow",
        "gap",
        result,
        reference,
        context=sweepable.describe(settings),
        flag=sweepable.flag,
        flag_meaning=sweepable.flag_meaning,
    ).table()
    assert "horizon T = 4" in table and "23 of 24 runs succeeded" in table
    assert "6 of the 23 successful runs have `left_flow`" in table
    assert "0.1·‖θ_GF(T)‖" in table and table.count("†1") == 6
    assert settings["max_steps"] == 200  # t1/lr at the smallest lr
    for i, j in [(0, 0), (2, 1), (5, 2)]:
        solo = experiment.sweep.point(
            settings,
            key=jax.random.key(0),
            scale=result.axes["scale"][i],
            lr=result.axes["lr"][j],
        )
        for name, value in solo.items():
            assert np.isclose(result.values[name][i, j, 0], value, rtol=1e-12)
    assert (reference / "figure.png").stat().st_size > 10_000
    assert json.loads((reference / "status.json").read_text()) == {"state": "complete"}


# Ctrl-C in the default suite; SIGTERM reaches the same handler (`flowgap run`'s
# tests/test_cli_interrupt.py checks both signals), and runs with `-m slow`
@pytest.mark.parametrize(
    "stop",
    [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGINT],
    ids=["term", "int"],
)
def test_killed_sweep_resumes_bit_for_bit(reference, tmp_path, stop, capsys):
    folder = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_FIRST_CHUNK, *ARGS, "--out", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a test runner started in the background (no
        # job control) hands its children SIGINT ignored, which Python keeps
        preexec_fn=_default_sigint,
    )
    # the child writes `paused` after its first chunk and then waits, so the
    # signal lands mid-sweep however fast the machine is
    paused = folder / "chunks" / "paused"
    deadline = time.monotonic() + 120
    while not paused.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no chunk was written in 120 s"
        time.sleep(0.05)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + stop
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"flowgap sweep --resume {folder}" in lines[0]
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert 1 <= status["chunks_done"] < status["chunks_total"] == 24
    partial = load_sweep(folder / "partial.npz")  # loadable; unfinished runs NaN
    done = np.isfinite(partial.values["final_loss"]).sum()
    assert done == status["chunks_done"] - 1 or done == status["chunks_done"]
    assert not (folder / "sweep.npz").exists()

    assert main(["sweep", "--resume", str(folder), "--no-progress"]) == 0
    resumed, uninterrupted = (
        _arrays(folder / "sweep.npz"),
        _arrays(reference / "sweep.npz"),
    )
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert resumed[name].tobytes() == uninterrupted[name].tobytes(), name
    assert not (folder / "partial.npz").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sweep", "step-vs-flow", "--grid", "scale=1:2"], "`--grid` axis `scale`"),
        (["sweep", "step-vs-flow", "--grid", "scale="], "`--grid` axis `scale`"),
        (["sweep", "step-vs-flow", "--grid", "scale=0:1:3:log"], "`scale`"),
        (["sweep", "step-vs-flow", "--grid", "scale=1:2:0"], "NUM"),
        (["sweep", "step-vs-flow", "--grid", "scale=-1,2"], "`scale`"),
        (["sweep", "step-vs-flow", "--grid", "depth=2,3"], "`depth`"),
        (["sweep", "step-vs-flow", "--grid", "lr=0,1"], "`lr`"),
        (["sweep", "step-vs-flow", "--grid", "lr=a"], "`lr`"),
        (["sweep", "step-vs-flow", "--quick", "--grid", "lr=0.03"], "`lr`"),
        (["sweep", "step-vs-flow", "--grid", "scale=0.1,1"], "`--grid lr=...`"),
        (["sweep", "step-vs-flow"], "--grid"),
        (["sweep", "step-vs-flow", "--grid", "lr=1", "--seeds", "0"], "`--seeds`"),
        (["sweep", "step-vs-flow", "--grid", "lr=1", "--chunk-size", "0"], "chunk"),
        (["sweep", "gap", "--grid", "lr=1"], "cannot be swept"),
        (["sweep", "nope", "--grid", "lr=1"], "unknown experiment"),
        (["sweep", "--resume", "/nonexistent/run"], "`--resume`"),
        (["sweep"], "NAME or --resume"),
        (["sweep", "--resume", "x", "--grid", "lr=1"], "drop --grid"),
    ],
)
def test_bad_sweep_input_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_netcdf_matches_npz(reference):
    import xarray

    with xarray.open_dataset(reference / "sweep.nc") as dataset:
        result = load_sweep(reference / "sweep.npz")
        assert list(dataset.sizes) == ["scale", "lr", "seed"]
        for axis, values in result.axes.items():
            assert np.array_equal(dataset[axis].values, values)
        for name, values in result.values.items():
            assert np.array_equal(dataset[name].values, values, equal_nan=True)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
