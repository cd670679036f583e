import json
import subprocess
import sys

import numpy as np
import pytest

from flowgap._cli import main


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "flowgap._cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "step-vs-flow", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("n=40", "d=200", "sparsity=5", "depth=2", "scale=0.01", "lrs=", "t1="):
        assert name in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "nope"], "nope"),
        (["run", "step-vs-flow", "--set", "foo=1"], "`foo`"),
        (["run", "step-vs-flow", "--set", "n=abc"], "`n`"),
        (["run", "step-vs-flow", "--set", "scale=-1"], "`scale`"),
        (["run", "step-vs-flow", "--set", "scale=nan"], "`scale`"),
        (["run", "step-vs-flow", "--set", "lrs=0.03", "--quick"], "`lrs`"),
        (["run", "step-vs-flow", "--set", "lrs="], "`lrs`"),
        (["run", "step-vs-flow", "--set", "depth=1"], "`depth`"),
        (["run", "step-vs-flow", "--set", "polar_variant=other"], "`polar_variant`"),
        (["run", "step-vs-flow", "--set", "sparsity=30", "--quick"], "`sparsity`"),
        (["run", "step-vs-flow", "--set", "nokeyvalue"], "key=value"),
        (["run", "step-vs-flow", "--dtype", "float16"], "float16"),
        (["run", "step-vs-flow", "--seed", "-3"], "--seed"),
        (["frobnicate"], "frobnicate"),
        (["run", "invariants", "--set", "lrs=0.3"], "`lrs`"),
        (["run", "invariants", "--set", "ratio=0"], "`ratio`"),
        (["run", "gap", "--set", "lrs=0.3,0.2"], "`lrs`"),
        (["run", "gap", "--set", "lrs=0.1"], "`lrs`"),
        (["run", "edge-of-stability", "--set", "lrs=0.3"], "`lrs`"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_quick_run_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "run"
    done = _cli("run", "step-vs-flow", "--quick", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "gap exponent (plain)" in done.stdout
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["n"] == 10 and settings["dtype"] == "float64"
    results = json.loads((out / "results.json").read_text())
    # GD is first order in the learning rate; at the quick size the ladder is
    # short and coarse, so the fit is checked loosely here (tight in test_gap).
    assert 0.8 < results["fits"]["plain"]["slope"] < 1.2
    arrays = np.load(out / "arrays.npz", allow_pickle=False)
    assert arrays["lrs"].tolist() == [0.04, 0.02, 0.01]
    assert (out / "figure.png").stat().st_size > 10_000
    # results folders are never overwritten without --force
    again = _cli("run", "step-vs-flow", "--quick", "--no-progress", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_same_seed_same_bytes(tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "run",
                    "step-vs-flow",
                    "--quick",
                    "--no-progress",
                    "--out",
                    str(tmp_path / name),
                    "--set",
                    "saves=20",
                ]
            )
            == 0
        )
    a = np.load(tmp_path / "a" / "arrays.npz")
    b = np.load(tmp_path / "b" / "arrays.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_invariants_job_quick(tmp_path):
    from flowgap.experiments import run

    result, folder = run("invariants", quick=True, out=tmp_path / "inv", progress=False)
    by_clock = {(r["model"], r["clock"]): r for r in result.rows}
    for model in ("diagonal", "polar", "deep-linear", "relu-two-layer"):
        gf = by_clock[(model, "GF")]
        assert gf["relative"] < 1e-8  # the flow conserves the law
        gd = by_clock[(model, "GD lr=0.04")]
        # every law here is quadratic with ⟨∇Q, P∇L⟩ = 0: prediction exact
        assert gd["drift"] == pytest.approx(gd["predicted"], rel=1e-9)
        assert gd["relative"] > 1e3 * gf["relative"]  # and steps do break it
    assert (folder / "figure.png").exists()
    assert "drift exponent in lr (deep-linear)" in result.table()


def test_gap_job_quick(tmp_path):
    from flowgap.experiments import run

    result, folder = run("gap", quick=True, out=tmp_path / "gap", progress=False)
    assert len(result.rows) == 9
    for row in result.rows:
        low, high = row["ci"]
        # four learning rates (2 degrees of freedom): the gaps lie on a power law
        # (95% interval measured ≤ 0.09 wide) ...
        assert high - low < 0.15, row
        # ... whose slope is the expected order (1, 2, 3): the next-order term
        # bends it by at most 0.041 at these steps (measured; an interval may
        # then just exclude the asymptotic value), well inside 0.06
        assert abs(row["slope"] - row["expected"]) < 0.06, row
    assert (folder / "figure.png").exists()


def test_edge_of_stability_job_quick(tmp_path):
    from flowgap.experiments import run

    result, folder = run(
        "edge-of-stability", quick=True, out=tmp_path / "eos", progress=False
    )
    by_lr = {r["lr"]: r for r in result.rows}
    # η = 0.4: the sharpness exceeds 2/η = 5 and GD leaves the flow after that;
    # η = 0.1: 2/η = 20 is never reached and GD stays with the flow
    assert by_lr[0.4]["max_sharpness"] > 5.0
    assert by_lr[0.4]["cross_time"] < by_lr[0.4]["depart_time"]
    assert by_lr[0.1]["max_sharpness"] < 20.0 and by_lr[0.1]["depart_time"] is None
    assert result.fits["departs_after_crossing"]
    assert (folder / "figure.png").exists()
