"""Every `flowgap run NAME --quick` job, timed as a user runs it.

Run: `.venv/bin/python benchmarks/bench_quick.py [--jobs a,b] [--dtypes float64]
[--record]`. Each job runs as its own `flowgap run NAME --quick --dtype D
--no-progress --out TMP` process, one at a time, so the wall time includes
Python start-up, the JAX import and every compile. It runs twice, with a
compilation cache (`FLOWGAP_CACHE_DIR`) of its own: "cold" starts from an empty
cache, what a user waits for the first time on a fresh machine; "warm" is the
same job again, loading the programs the cold run stored (programs with host
callbacks are compiled again; docs: cli.md). The table gives, per job and
dtype, both wall times, the exit codes and the number of "Traceback" lines in
stderr; the target is a wall time under 15 s on 2 cores, exit 0 and no
traceback, and the table says whether the cold run and the warm run meet it.
`--record` appends the table, with the machine and load, to
`benchmarks/RESULTS.md`.

`--breakdown` runs each job a third time, through `profile_job.py` with an empty
cache of its own, and adds where that run's time went: start-up imports, JAX's
tracing, lowering and XLA compiling (and how many programs), the saving, and
their sum, the floor: the wall time the job would take if its programs cost
nothing to run. A job whose floor is above the target cannot meet it without
compiling fewer programs.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from bench_core import append_results, table

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLOWGAP = [sys.executable, "-m", "flowgap"]
TARGET_SECONDS = 15.0


def job_names() -> list[str]:
    listed = subprocess.run(
        [*FLOWGAP, "list"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def time_job(name: str, dtype: str, out: pathlib.Path, run: str) -> dict:
    """One `flowgap run NAME --quick` process, its compilation cache in
    `out/cache-NAME-DTYPE` (empty before the cold run, kept for the warm one)."""
    env = {**os.environ, "FLOWGAP_CACHE_DIR": str(out / f"cache-{name}-{dtype}")}
    start = time.perf_counter()
    done = subprocess.run(
        [*FLOWGAP, "run", name, "--quick", "--dtype", dtype, "--no-progress"]
        + ["--out", str(out / f"{name}-{dtype}-{run}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return dict(
        seconds=seconds,
        code=done.returncode,
        tracebacks=done.stderr.count("Traceback"),
        last=last[:60] if done.returncode else "",
    )


def profile_job(name: str, dtype: str, out: pathlib.Path) -> dict:
    """`time_job`'s run through `profile_job.py` (an empty cache of its own):
    its split of the wall time, with Python's own start-up (before the script's
    first line) counted into `startup`."""
    env = {**os.environ, "FLOWGAP_CACHE_DIR": str(out / f"cache-{name}-{dtype}-p")}
    split = out / f"{name}-{dtype}-profile.json"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_job.py"), str(split)]
        + ["--", "run", name, "--quick", "--dtype", dtype, "--no-progress"]
        + ["--out", str(out / f"{name}-{dtype}-profile")],
        capture_output=True,
        cwd=ROOT,
        env=env,
    )
    seconds = time.perf_counter() - start
    parts = json.loads(split.read_text())
    parts["startup"] += seconds - parts["wall"]
    parts["wall"] = seconds
    return parts


PARTS = ("startup", "trace", "lower", "compile", "save")


def breakdown_row(name: str, dtype: str, parts: dict) -> list[str]:
    floor = sum(parts[p] for p in PARTS)
    rest = parts["wall"] - floor
    return [name, dtype, f"{parts['wall']:.1f}"] + [
        *(f"{parts[p]:.1f}" for p in PARTS),
        str(parts["programs"]),
        f"{floor:.1f}",
        f"{rest:.1f}",
        "no" if floor >= TARGET_SECONDS else "yes",
    ]


def row(name: str, dtype: str, cold: dict, warm: dict) -> list[str]:
    """A table row: both wall times, the exit codes and tracebacks of both runs,
    whether each met the target, and the first failing run's last stderr line."""
    runs = (cold, warm)
    ok = all(r["code"] == 0 and not r["tracebacks"] for r in runs)
    met = ["yes" if ok and r["seconds"] < TARGET_SECONDS else "no" for r in runs]
    return [name, dtype, f"{cold['seconds']:.1f}", f"{warm['seconds']:.1f}"] + [
        "/".join(str(r["code"]) for r in runs),
        str(sum(r["tracebacks"] for r in runs)),
        *met,
        next((r["last"] for r in runs if r["last"]), ""),
    ]


def machine_info() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; command: "
        f"`.venv/bin/python benchmarks/bench_quick.py {' '.join(sys.argv[1:])}`"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", help="comma-separated job names (default: all)")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    parser.add_argument(
        "--breakdown", action="store_true", help="a third, profiled run per job"
    )
    args = parser.parse_args()
    names = args.jobs.split(",") if args.jobs else job_names()
    dtypes = args.dtypes.split(",")
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info, flush=True)
    rows, splits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for dtype in dtypes:
                cold, warm = (
                    time_job(name, dtype, pathlib.Path(tmp), run)
                    for run in ("cold", "warm")
                )
                rows.append(row(name, dtype, cold, warm))
                print("  ".join(rows[-1]), flush=True)
                if args.breakdown:
                    parts = profile_job(name, dtype, pathlib.Path(tmp))
                    splits.append(breakdown_row(name, dtype, parts))
                    print("  ".join(splits[-1]), flush=True)
    body = (
        f"flowgap run NAME --quick, one process per job; target: < "
        f"{TARGET_SECONDS:g} s, exit 0, no traceback\n"
        + table(
            ["job", "dtype", "cold s", "warm s", "exit", "tracebacks"]
            + ["cold met", "warm met", "error"],
            rows,
        )
    )
    if splits:
        body += (
            "\n\nwhere a third, profiled run's time went (s; floor = every part "
            "but running programs; rest = running and Python between them)\n"
            + table(
                ["job", "dtype", "wall", *PARTS, "programs", "floor", "rest"]
                + ["floor met"],
                splits,
            )
        )
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print("\n" + body)
    print(f"\ntotal {wall:.0f} s; load average (1 min): {load0:.2f} / {load1:.2f}")
    if args.record:
        append_results(info, body, wall, (load0, load1), "bench_quick.py")


if __name__ == "__main__":
    main()
