"""Where one `flowgap` command's wall time goes: start-up, JAX's tracing,
lowering and XLA compiling, the job's saving, and the rest (running programs and
Python between them).

Run: `.venv/bin/python benchmarks/profile_job.py OUT.json -- run NAME --quick
...`. It runs `flowgap.main(ARGS)` in this process with listeners on JAX's own
compile-time events (`jax.monitoring`: jaxpr tracing, jaxpr → MLIR, XLA backend
compile; cache hits record no backend compile) and times the job's `_save`
step, then writes the totals to OUT.json and exits with the command's code.
`bench_quick.py --breakdown` runs it for every job; this script exists so that
its split is measured the same way for each job, by one piece of code.

The "floor" it reports is every part but the running: what the job would take
with programs that cost nothing to execute. A job whose floor exceeds a time
target cannot meet it without compiling fewer or smaller programs.
"""

import json
import sys
import time

STARTED = time.perf_counter()

# the events' names, as jax/_src/dispatch.py records them
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def main() -> int:
    out, separator, *argv = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: profile_job.py OUT.json -- FLOWGAP-ARGS...")
    import jax.monitoring

    totals = dict(trace=0.0, lower=0.0, compile=0.0, save=0.0, programs=0)

    def listen(event, duration, **_):
        part = EVENTS.get(event)
        if part is not None:
            totals[part] += duration
            totals["programs"] += part == "compile"

    jax.monitoring.register_event_duration_secs_listener(listen)
    from flowgap import _cli
    from flowgap.experiments import _registry

    saving = _registry._save

    def timed_save(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return saving(*args, **kwargs)
        finally:
            totals["save"] += time.perf_counter() - begun

    _registry._save = timed_save
    totals["startup"] = time.perf_counter() - STARTED
    code = _cli.main(argv)
    totals["wall"] = time.perf_counter() - STARTED
    totals["code"] = code
    with open(out, "w") as file:
        json.dump(totals, file)
    return code


if __name__ == "__main__":
    sys.exit(main())
