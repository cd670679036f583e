"""Every `flowgap run NAME --quick` job, timed as a user runs it.

Run: `.venv/bin/python benchmarks/bench_quick.py [--jobs a,b] [--dtypes float64]
[--record]`. Each job runs as its own `flowgap run NAME --quick --dtype D
--no-progress --out TMP` process, one at a time, so the wall time includes
Python start-up, the JAX import and every compile: what a user waits for on a
fresh machine (no persistent compilation cache). The table gives, per job and
dtype, the wall time, the exit code and the number of "Traceback" lines in
stderr; the target is a wall time under 15 s on 2 cores, exit 0 and no
traceback. `--record` appends the table, with the machine and load, to
`benchmarks/RESULTS.md`.
"""

import argparse
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


def time_job(name: str, dtype: str, out: pathlib.Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [*FLOWGAP, "run", name, "--quick", "--dtype", dtype, "--no-progress"]
        + ["--out", str(out / f"{name}-{dtype}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return dict(
        seconds=seconds,
        code=done.returncode,
        tracebacks=done.stderr.count("Traceback"),
        last=last[:60] if done.returncode else "",
    )


def machine_info() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; command: "
        "`.venv/bin/python benchmarks/bench_quick.py --record`"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", help="comma-separated job names (default: all)")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args()
    names = args.jobs.split(",") if args.jobs else job_names()
    dtypes = args.dtypes.split(",")
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    print(info, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for dtype in dtypes:
                r = time_job(name, dtype, pathlib.Path(tmp))
                ok = r["code"] == 0 and not r["tracebacks"]
                met = ok and r["seconds"] < TARGET_SECONDS
                rows.append(
                    [name, dtype, f"{r['seconds']:.1f}", str(r["code"])]
                    + [str(r["tracebacks"]), "yes" if met else "no", r["last"]]
                )
                print("  ".join(rows[-1]), flush=True)
    body = (
        f"flowgap run NAME --quick, one process per job; target: < "
        f"{TARGET_SECONDS:g} s, exit 0, no traceback\n"
        + table(
            ["job", "dtype", "wall s", "exit", "tracebacks", "target met", "error"],
            rows,
        )
    )
    wall, load1 = time.perf_counter() - start, os.getloadavg()[0]
    print("\n" + body)
    print(f"\ntotal {wall:.0f} s; load average (1 min): {load0:.2f} / {load1:.2f}")
    if args.record:
        append_results(info, body, wall, (load0, load1), "bench_quick.py")


if __name__ == "__main__":
    main()
