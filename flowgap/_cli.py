"""The `flowgap` command line.

    flowgap list
    flowgap run NAME [--quick] [--out DIR] [--seed N] [--dtype float64|float32]
                     [--set key=value ...] [--force] [--debug]
    flowgap sweep NAME --grid AXIS=START:STOP:NUM[:log] ... [--seeds N]
                     [--chunk-size C] [--quick] [--set key=value ...] [--out DIR]
    flowgap sweep --resume RUN_DIR

Bad input prints one line and exits with code 2 (`--debug` shows the traceback).
SIGINT and SIGTERM stop a run at once (its folder keeps `settings.json` and a
`status.json` saying "interrupted"), and stop a sweep between chunks, keeping what
is finished and printing how to resume; either way one line names what was
written, and the exit code is 128 + the signal number.

`flowgap --help`, `flowgap run --help` and `flowgap list` import neither JAX nor
the jobs: the job names and summaries are read from the job modules' source.
"""

import os
import signal
import sys
import threading
import traceback

from ._cli_parser import UsageError, build_parser, listing


def _overrides(pairs) -> dict:
    overrides = {}
    for key, value in pairs:
        if key in overrides:
            raise UsageError(f"setting `{key}` given twice")
        overrides[key] = value
    return overrides


def _sweep(args) -> int:
    from .experiments._sweep_runner import resume_sweep, run_sweep
    from .sweeps._spec import parse_axis

    _use_compilation_cache()

    progress = not args.no_progress
    if args.resume is not None:
        extra = [
            flag
            for flag, given in (
                ("NAME", args.name),
                ("--grid", args.grid),
                ("--set", args.overrides),
                ("--quick", args.quick),
                ("--out", args.out),
                ("--seeds", args.seeds != 1),
                ("--chunk-size", args.chunk_size != 64),
                ("--dtype", args.dtype != "float64"),
            )
            if given
        ]
        if extra:
            raise UsageError(
                f"--resume takes every setting from RUN_DIR/settings.json; "
                f"drop {', '.join(extra)}"
            )
        done = resume_sweep(args.resume, progress=progress)
    else:
        if args.name is None:
            raise UsageError("flowgap sweep needs an experiment NAME or --resume")
        grid = {}
        for text in args.grid:
            axis, values = parse_axis(text)
            if axis in grid:
                raise UsageError(f"`--grid` axis `{axis}` given twice")
            grid[axis] = values
        done = run_sweep(
            args.name,
            grid=grid,
            seeds=args.seeds,
            quick=args.quick,
            dtype=args.dtype,
            overrides=_overrides(args.overrides),
            out=args.out,
            force=args.force,
            chunk_size=args.chunk_size,
            progress=progress,
        )
    print(done.table())
    print(
        f"\nwrote {done.folder}/ (settings.json, sweep.npz, summary.json, figure.png, "
        "status.json)"
    )
    return 0


class _RunInterrupted(KeyboardInterrupt):
    """A `flowgap run` stopped by a signal; its job thread, unless `finished`, is
    abandoned."""

    def __init__(self, job, written: list[str], finished: threading.Event, progress):
        super().__init__("run interrupted")
        self.job, self.written, self.finished = job, written, finished
        self.progress = progress


def _use_compilation_cache() -> None:
    """Keep XLA's compiled programs on disk between `flowgap` runs: JAX's
    persistent compilation cache, in `$FLOWGAP_CACHE_DIR` (default
    `$XDG_CACHE_HOME/flowgap/xla`, else `~/.cache/flowgap/xla`; `off` disables
    it), unless the user set JAX's own `JAX_COMPILATION_CACHE_DIR`. A repeated
    job loads its programs instead of compiling them; programs with host
    callbacks (runtime error checks, progress meters) are compiled every time,
    as JAX cannot store them. Results are the same bits either way."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own choice
        return
    folder = os.environ.get("FLOWGAP_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        folder = os.path.join(base, "flowgap", "xla")
    if folder.strip().lower() in ("", "off", "0", "false", "no"):
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        print(f"flowgap: compilation cache off ({err})", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    # JAX stores only programs slower to compile than this (default 1 s); most
    # of a job's programs take 0.2–1 s, and reading one back takes milliseconds
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _run(args) -> int:
    from .experiments._registry import prepare

    _use_compilation_cache()
    overrides = _overrides(args.overrides)
    if args.seed < 0:
        raise UsageError(f"--seed must be ≥ 0, got {args.seed}")
    job = prepare(
        args.name,
        quick=args.quick,
        seed=args.seed,
        dtype=args.dtype,
        overrides=overrides,
        out=args.out,
        force=args.force,
    )
    outcome, finished = {}, threading.Event()

    def compute():
        try:
            outcome["result"] = job.compute(progress=not args.no_progress)
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err
        finally:
            finished.set()

    # XLA holds a thread until its kernel returns, and Python runs signal handlers
    # in the main thread only: the job computes in a worker thread while the main
    # thread waits, so SIGINT/SIGTERM are handled at once. (It waits on an Event:
    # a `Thread.join` cut short by a signal marks the thread stopped on 3.11.)
    worker = threading.Thread(target=compute, name=f"flowgap run {args.name}")
    worker.daemon = True
    try:
        job.begin()
        worker.start()
        while not finished.wait(0.2):
            pass
        if isinstance(outcome.get("error"), KeyboardInterrupt):
            raise outcome["error"]
    except KeyboardInterrupt as stop:
        _ignore_signals()  # a second Ctrl-C must not cut the report short
        written = job.interrupt()
        raise _RunInterrupted(job, written, finished, not args.no_progress) from stop
    if "error" in outcome:
        raise outcome["error"]
    print(outcome["result"].table())
    print(f"\nwrote {job.folder.path}/ ({', '.join(job.folder.written)})")
    return 0


def _interrupted_run(stop: _RunInterrupted) -> str:
    """The one line saying where the run stopped and exactly what it wrote."""
    job, folder = stop.job, stop.job.folder.path
    wrote = (
        f"wrote {', '.join(f'{folder}/{name}' for name in stop.written)}"
        if stop.written
        else "nothing was written"
    )
    name = job.experiment.name
    if job.stage in ("complete", "failed"):
        return f"flowgap: interrupted after {name} ended ({job.stage}); {wrote}"
    if job.stage == "saving":
        return (
            f"flowgap: interrupted while saving {name}'s results; {wrote}; "
            f"not written: {', '.join(job.unsaved())}"
        )
    return (
        f"flowgap: interrupted while {name} was {job.stage}; {wrote} "
        "(this job keeps no partial results: rerun it to get them)"
    )


class _Stopped(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Stopped


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv=None) -> int:
    """The `flowgap` command: `main()` is the program (`sys.argv`), `main(argv)`
    the same from Python. An interrupted `flowgap run` whose job is still inside
    an XLA computation cannot wait for it: the program ends the process at once
    (`os._exit`, after the report is written and flushed); `main(argv)` returns
    the exit code and leaves the job's daemon thread to finish unheard."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGINT keeps its handler (KeyboardInterrupt, or ignored under nohup); both
    # are restored on return, since an interrupted run ignores further signals
    previous = {
        signal.SIGINT: signal.getsignal(signal.SIGINT) if main_thread else None,
        signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)
        if main_thread
        else None,
    }
    try:
        code, abandoned = _main(argv, debug)
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
    if program and abandoned is not None and not abandoned.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv, debug) -> tuple[int, threading.Event | None]:
    # The CLI only writes figures to files, so it picks the file backend (unless
    # the user chose one); library code never chooses a backend.
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            print("\n".join(listing()))
            return 0, None
        return (_sweep(args) if args.command == "sweep" else _run(args)), None
    except (UsageError, ValueError, TypeError) as err:  # SettingError, OutputError
        if debug:
            traceback.print_exc()
        print(f"flowgap: error: {err}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt as stop:
        code = 128 + (signal.SIGTERM if _terminated(stop) else signal.SIGINT)
        if isinstance(stop, _RunInterrupted):
            # after a progress bar's last frame, on a line of its own
            print("\n" * stop.progress + _interrupted_run(stop), file=sys.stderr)
            return code, stop.finished
        checkpoint = getattr(stop, "checkpoint", None)  # a SweepInterrupted
        if checkpoint is not None:
            folder = checkpoint.parent
            print(
                f"flowgap: interrupted after {stop.done} of {stop.total} chunks; "
                f"finished runs are in {folder} (partial.npz, status.json); resume "
                f"with: flowgap sweep --resume {folder}",
                file=sys.stderr,
            )
        else:
            print("flowgap: interrupted before any result was written", file=sys.stderr)
        return code, None
    except Exception as err:  # a run failure: one line, the details under --debug
        if debug:
            traceback.print_exc()
        print(f"flowgap: {type(err).__name__}: {_message(err)}", file=sys.stderr)
        return 1, None


def _message(err: Exception) -> str:
    """`err`'s message in one line. An error raised inside JIT (equinox's
    `EquinoxRuntimeError`) carries the stack first and its message after a line
    `equinox.EquinoxRuntimeError: `, which is the line kept."""
    lines = str(err).splitlines() or [type(err).__name__]
    marker = f"{type(err).__name__}: "
    inner = [line.split(marker, 1)[1] for line in lines if marker in line]
    return inner[-1] if inner else lines[0]


def _terminated(stop: BaseException) -> bool:
    """Whether SIGTERM (not Ctrl-C) caused this stop, directly or as the cause of
    a SweepInterrupted."""
    while stop is not None:
        if isinstance(stop, _Stopped):
            return True
        stop = stop.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
