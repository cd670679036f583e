"""Every CLI job, as a user runs it: `flowgap run NAME --quick` in a process of
its own, in float32 and float64 (`-m slow`; the study tests check float64's
numbers in-process). A run that succeeds exits 0, prints its table and no
traceback, and writes `status.json` marked complete.

The float32 runs are in the default suite except the three heaviest (`HEAVY`,
45–90 s each on 2 cores, a fifth of the suite's CPU time together): they run
with `-m slow`, and the default suite checks their jobs' float64 quick runs
in-process (tests/test_central_flow_study.py, test_sgd_vs_sde_study.py,
test_wn_robust_bias.py) and float32's dtype-aware checks in
tests/test_precision.py."""

import json
import subprocess
import sys

import pytest

from flowgap.experiments import _registry

JOBS = list(_registry.EXPERIMENTS)
HEAVY = {"central-flow", "sgd-vs-sde", "wn-robust-bias"}


def _run_quick(name, dtype, out):
    return subprocess.run(
        [sys.executable, "-m", "flowgap", "run", name, "--quick", "--no-progress"]
        + ["--dtype", dtype, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _check(done, out):
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert done.stdout.strip(), "no table printed"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "complete"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in JOBS],
)
def test_quick_float32_run_is_clean(name, tmp_path):
    out = tmp_path / name
    _check(_run_quick(name, "float32", out), out)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("name", JOBS)
def test_quick_float64_run_is_clean(name, tmp_path):
    out = tmp_path / name
    _check(_run_quick(name, "float64", out), out)
