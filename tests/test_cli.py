import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from flowgap import _cli_parser as cli_parser
from flowgap._cli import main
from flowgap.experiments import ExperimentResult, Panel, Series, _registry
from flowgap.experiments._output import FolderClosed, RunFolder, json_text, write_json
from flowgap.experiments._table import Column


def _cli(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "flowgap._cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env=None if env is None else {**os.environ, **env},
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
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a setting checked by the job leaves a runs/ folder
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_quick_run_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "run"
    cache = dict(FLOWGAP_CACHE_DIR=str(tmp_path / "xla"))
    quick = ("run", "step-vs-flow", "--quick", "--no-progress", "--out")
    done = _cli(*quick, str(out), env=cache)
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
    assert json.loads((out / "status.json").read_text()) == {"state": "complete"}
    assert "status.json" in done.stdout.splitlines()[-1]
    # the compiled programs were kept on disk, and a run that loads them gives
    # the same bits
    assert any((tmp_path / "xla").iterdir())
    warm = _cli(*quick, str(tmp_path / "warm"), env=cache)
    assert warm.returncode == 0, warm.stderr
    a, b = (np.load(folder / "arrays.npz") for folder in (out, tmp_path / "warm"))
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.slow  # the default suite compares two runs' bits in the cache test
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


# -- `--help` and `list` start without JAX --------------------------------------

HELP_WITHOUT_JAX = """
import sys, time
start = time.perf_counter()
from flowgap._cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("jax", "numpy", "matplotlib", "equinox") if m in sys.modules)
print("imported:", heavy, "seconds:", round(time.perf_counter() - start, 3))
"""


@pytest.mark.parametrize("args", [["--help"], ["list"], ["run", "--help"]])
def test_help_and_list_import_neither_jax_nor_numpy(args):
    done = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_JAX, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "imported: []" in done.stdout, done.stdout
    assert "step-vs-flow" in done.stdout and "wn-robust-bias" in done.stdout


REGISTRY_IMPORTS = """
import sys
import flowgap.experiments
late = ("scipy.stats", "matplotlib", "xarray", "sklearn", "h5netcdf")
print("imported:", sorted(m for m in late if m in sys.modules))
"""


def test_registry_leaves_output_and_fit_libraries_to_the_job():
    """Every `flowgap run` loads the whole registry; a library only a figure, a
    results file or a fit needs (scipy.stats alone costs 0.7 s) is imported
    where it is used, so that no job pays for another's."""
    done = subprocess.run(
        [sys.executable, "-c", REGISTRY_IMPORTS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "imported: []" in done.stdout, done.stdout


def test_job_listing_is_the_registry():
    """`--help` and `list` read names and summaries from the job modules' source;
    they must be the registry's, in its order."""
    assert cli_parser.jobs() == {
        e.name: e.summary for e in _registry.EXPERIMENTS.values()
    }
    assert list(cli_parser.jobs()) == list(_registry.EXPERIMENTS)


def test_list_and_help_name_every_job(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(_registry.EXPERIMENTS)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for name, experiment in _registry.EXPERIMENTS.items():
        assert f"{name:<18} {experiment.summary.split(': ', 1)[-1]}" in help_text


def test_sweep_help_loads_the_sweepable_jobs(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    for name, experiment in _registry.EXPERIMENTS.items():
        assert (f"  {name}: axes" in out) == (experiment.sweep is not None)


# -- the run folder: checked first, strict JSON, a status ----------------------


def _fake_job(monkeypatch, run):
    """Replace step-vs-flow's runner by `run` (the settings stay its own)."""
    experiment = _registry.get("step-vs-flow")
    monkeypatch.setitem(
        _registry.EXPERIMENTS,
        "step-vs-flow",
        dataclasses.replace(experiment, run=run),
    )


class _NaNResult(ExperimentResult):
    def columns(self):
        return (Column("x", fmt=".3g"),)

    def panels(self):
        return (Panel(title="y", series=(Series("y"),)),)


def _nan_result(settings, *, seed, progress):
    nan, inf = math.nan, math.inf
    return _NaNResult(
        settings=settings,
        rows=[{"x": nan}, {"x": 1.0}],
        fits={"slope": np.float64(nan), "ci": (-inf, inf), "n": np.int64(2)},
        curves={"y": np.array([1.0, nan, 2.0])},
    )


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path.name} holds the non-JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_json_is_strict_nan_and_inf_are_null(tmp_path):
    data = {
        "nan": math.nan,
        "inf": [math.inf, -np.inf, np.float32(np.nan)],
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "fine": (1, 2.5, True, None, "text"),
    }
    write_json(tmp_path / "x.json", data)
    assert _strict_json(tmp_path / "x.json") == {
        "nan": None,
        "inf": [None, None, None],
        "array": [[1.0, None], [None, 2.0]],
        "fine": [1, 2.5, True, None, "text"],
    }
    with pytest.raises(TypeError, match="cannot write"):
        json_text({"key": object()})


def test_run_folder_json_is_strict(tmp_path, monkeypatch):
    _fake_job(monkeypatch, _nan_result)
    out = tmp_path / "run"
    assert main(["run", "step-vs-flow", "--no-progress", "--out", str(out)]) == 0
    results = _strict_json(out / "results.json")
    assert results["fits"] == {"slope": None, "ci": [None, None], "n": 2}
    assert results["rows"] == [{"x": None}, {"x": 1.0}]
    for name in ("settings.json", "status.json"):
        _strict_json(out / name)
    assert np.isnan(np.load(out / "arrays.npz")["y"][1])  # arrays keep their NaN


def test_a_closed_run_folder_lists_exactly_what_was_written(tmp_path):
    """An interrupt closes the folder: the first close records the state, later
    writes (a job thread still computing) are refused, and the list is exact."""
    folder = RunFolder(tmp_path)
    folder.write_json("settings.json", {"n": 1})
    status = {"state": "interrupted"}
    assert folder.close(lambda: ("status.json", status)) == [
        "settings.json",
        "status.json",
    ]
    with pytest.raises(FolderClosed):
        folder.write_json("results.json", {"rows": []})
    assert folder.close(lambda: ("status.json", {"state": "failed"})) == [
        "settings.json",
        "status.json",
    ]
    assert _strict_json(tmp_path / "status.json") == status
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "settings.json",
        "status.json",
    ]


def test_bad_out_fails_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the run started before --out was checked")

    _fake_job(monkeypatch, never)
    blocker = tmp_path / "README.md"
    blocker.write_text("a file")
    args = ["run", "step-vs-flow", "--quick", "--out", str(blocker / "sub")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be created" in err
    assert "Traceback" not in err and not (blocker.parent / "sub").exists()


def test_a_failed_run_says_so_in_status(tmp_path, monkeypatch, capsys):
    def fails(settings, *, seed, progress):
        raise RuntimeError("the solver exploded\nsecond line")

    _fake_job(monkeypatch, fails)
    out = tmp_path / "run"
    assert main(["run", "step-vs-flow", "--out", str(out)]) == 1
    assert capsys.readouterr().err == ("flowgap: RuntimeError: the solver exploded\n")
    assert _strict_json(out / "status.json") == {
        "state": "failed",
        "error": "RuntimeError: the solver exploded",
    }
    assert sorted(p.name for p in out.iterdir()) == ["settings.json", "status.json"]


def test_an_interrupt_inside_the_job_is_reported_exactly(tmp_path, monkeypatch, capsys):
    """In-process twin of tests/test_cli_interrupt.py: a KeyboardInterrupt from
    the job (as Ctrl-C gives `flowgap.experiments.run` from Python)."""

    def interrupted(settings, *, seed, progress):
        raise KeyboardInterrupt

    _fake_job(monkeypatch, interrupted)
    out = tmp_path / "run"
    assert main(["run", "step-vs-flow", "--no-progress", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"wrote {out}/settings.json, {out}/status.json" in err
    assert "no partial results" in err
    assert _strict_json(out / "status.json") == {
        "state": "interrupted",
        "stage": "computing",
        "partial_results": False,
        "files": ["settings.json"],
    }
    # the same from Python: the folder says so, and the interrupt propagates
    with pytest.raises(KeyboardInterrupt):
        _registry.run("step-vs-flow", out=tmp_path / "py", progress=False)
    assert _strict_json(tmp_path / "py" / "status.json")["state"] == "interrupted"
