"""`flowgap run` stopped by SIGINT or SIGTERM while it computes: it exits within
2 s (XLA cannot be interrupted mid-kernel, so the job computes in a worker thread
and the main thread handles the signal), with 128 + the signal number, one line
naming exactly the files written, and a `status.json` saying "interrupted"."""

import json
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_interrupted_run_exits_at_once_and_says_what_it_wrote(tmp_path, stop):
    folder = tmp_path / "run"
    # the full step-vs-flow job computes for minutes: the signal lands mid-run
    process = subprocess.Popen(
        [sys.executable, "-m", "flowgap", "run", "step-vs-flow", "--no-progress"]
        + ["--out", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a test runner started in the background (no
        # job control) hands its children SIGINT ignored, which Python keeps
        preexec_fn=_default_sigint,
    )
    status = folder / "status.json"
    deadline = time.monotonic() + 120
    while not status.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run did not start in 120 s"
        time.sleep(0.05)
    assert json.loads(status.read_text()) == {"state": "running"}
    time.sleep(1.0)  # inside the computation (tracing, compiling or in XLA)
    assert process.poll() is None, process.communicate()
    sent = time.monotonic()
    process.send_signal(stop)
    out, err = process.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert elapsed < 2.0, f"exited {elapsed:.2f} s after the signal"
    assert process.returncode == 128 + stop
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines == [
        f"flowgap: interrupted while step-vs-flow was computing; wrote "
        f"{folder}/settings.json, {folder}/status.json (this job keeps no partial "
        "results: rerun it to get them)"
    ]
    assert json.loads(status.read_text()) == {
        "state": "interrupted",
        "stage": "computing",
        "partial_results": False,
        "files": ["settings.json"],
    }
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["experiment"] == "step-vs-flow" and settings["settings"]["d"] == 200
    # nothing else, not even a temporary file
    assert sorted(p.name for p in folder.iterdir()) == ["settings.json", "status.json"]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
