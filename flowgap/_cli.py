"""The `flowgap` command line.

    flowgap list
    flowgap run NAME [--quick] [--out DIR] [--seed N] [--dtype float64|float32]
                     [--set key=value ...] [--force] [--debug]
    flowgap sweep NAME --grid AXIS=START:STOP:NUM[:log] ... [--seeds N]
                     [--chunk-size C] [--quick] [--set key=value ...] [--out DIR]
    flowgap sweep --resume RUN_DIR

Bad input prints one line and exits with code 2 (`--debug` shows the traceback).
SIGINT and SIGTERM stop a sweep between chunks, keep what is finished, print how
to resume and exit with 128 + the signal number.
"""

import argparse
import os
import signal
import sys
import traceback


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def _parser() -> argparse.ArgumentParser:
    from .experiments import EXPERIMENTS

    parser = _Parser(
        prog="flowgap",
        description=(
            "Gradient descent vs the exact gradient flow of the same model, on one "
            "clock t = k·lr."
        ),
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    commands.add_parser("list", help="list the experiments")
    run = commands.add_parser("run", help="run an experiment (flowgap run NAME --help)")
    names = run.add_subparsers(dest="name", required=True, parser_class=_Parser)
    for experiment in EXPERIMENTS.values():
        sub = names.add_parser(
            experiment.name,
            help=experiment.summary,
            description=experiment.summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="settings (--set key=value; defaults shown):\n"
            + "\n".join("  " + s.describe() for s in experiment.settings)
            + "\n\n--quick uses: "
            + ", ".join(f"{k}={v}" for k, v in experiment.quick.items()),
        )
        sub.add_argument(
            "--quick", action="store_true", help="tiny settings, for tests"
        )
        sub.add_argument("--out", help="output folder (default: a new one under runs/)")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sub.add_argument(
            "--dtype",
            choices=("float64", "float32"),
            default="float64",
            help="precision (default float64)",
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            type=_key_value,
            default=[],
            metavar="KEY=VALUE",
            help="change a setting (repeatable)",
        )
        sub.add_argument("--force", action="store_true", help="overwrite --out")
        sub.add_argument(
            "--no-progress", action="store_true", help="hide progress bars"
        )
    sweep = _sweep_parser(commands, EXPERIMENTS)
    for p in (parser, run, sweep, *names.choices.values()):
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def _sweep_parser(commands, experiments):
    sweepable = {e.name: e for e in experiments.values() if e.sweep is not None}
    lines = [
        f"  {e.name}: axes {', '.join(e.sweep.axes)}; heat map of {e.sweep.metric}"
        for e in sweepable.values()
    ]
    sweep = commands.add_parser(
        "sweep",
        help="sweep an experiment over a grid as one compiled program (resumable)",
        description=(
            "Run an experiment's point function over the grid × seeds as one "
            "jit(vmap) program, chunked, sharded over all devices, checkpointed "
            "per chunk. Writes sweep.npz (and sweep.nc with xarray), "
            "summary.json and a heat map."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sweepable experiments:\n" + "\n".join(lines),
    )
    sweep.add_argument("name", nargs="?", help="experiment (omit with --resume)")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="AXIS=SPEC",
        help="an axis: START:STOP:NUM[:log|lin] or V1,V2,... (repeatable)",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    sweep.add_argument(
        "--chunk-size", type=int, default=64, help="runs per chunk (default 64)"
    )
    sweep.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped sweep")
    sweep.add_argument("--quick", action="store_true", help="the experiment's --quick")
    sweep.add_argument("--out", help="output folder (default: under runs/)")
    sweep.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="precision"
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="change a setting (repeatable)",
    )
    sweep.add_argument("--force", action="store_true", help="overwrite --out")
    sweep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return sweep


def _overrides(pairs) -> dict:
    overrides = {}
    for key, value in pairs:
        if key in overrides:
            raise _UsageError(f"setting `{key}` given twice")
        overrides[key] = value
    return overrides


def _sweep(args) -> int:
    from .experiments._sweep_runner import resume_sweep, run_sweep
    from .sweeps._spec import parse_axis

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
            raise _UsageError(
                f"--resume takes every setting from RUN_DIR/settings.json; "
                f"drop {', '.join(extra)}"
            )
        done = resume_sweep(args.resume, progress=progress)
    else:
        if args.name is None:
            raise _UsageError("flowgap sweep needs an experiment NAME or --resume")
        grid = {}
        for text in args.grid:
            axis, values = parse_axis(text)
            if axis in grid:
                raise _UsageError(f"`--grid` axis `{axis}` given twice")
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
        f"\nwrote {done.folder}/ (settings.json, sweep.npz, summary.json, figure.png)"
    )
    return 0


def _run(args) -> int:
    from .experiments import run

    overrides = _overrides(args.overrides)
    if args.seed < 0:
        raise _UsageError(f"--seed must be ≥ 0, got {args.seed}")
    result, folder = run(
        args.name,
        quick=args.quick,
        seed=args.seed,
        dtype=args.dtype,
        overrides=overrides,
        out=args.out,
        force=args.force,
        progress=not args.no_progress,
    )
    print(result.table())
    print(
        f"\nwrote {folder}/ (settings.json, results.json, results.nc, arrays.npz, "
        "figure.png)"
    )
    return 0


class _Stopped(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Stopped


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    previous = _catch_sigterm()
    try:
        return _main(argv, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _catch_sigterm():
    """Install the SIGTERM handler (only the main thread may); returns the old one."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _main(argv, debug) -> int:
    # The CLI only writes figures to files, so it picks the file backend (unless
    # the user chose one); library code never chooses a backend.
    os.environ.setdefault("MPLBACKEND", "Agg")
    from .experiments import EXPERIMENTS, SettingError
    from .experiments._output import OutputError
    from .sweeps import SweepInterrupted

    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            for experiment in EXPERIMENTS.values():
                summary = experiment.summary.split(": ", 1)[-1]
                print(f"{experiment.name:<18} {summary}")
            return 0
        return _sweep(args) if args.command == "sweep" else _run(args)
    except (_UsageError, SettingError, OutputError, ValueError, TypeError) as err:
        if debug:
            traceback.print_exc()
        print(f"flowgap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        code = 128 + (signal.SIGTERM if _terminated(stop) else signal.SIGINT)
        if isinstance(stop, SweepInterrupted) and stop.checkpoint is not None:
            folder = stop.checkpoint.parent
            print(
                f"flowgap: interrupted after {stop.done} of {stop.total} chunks; "
                f"finished runs are in {folder} (partial.npz); resume with: "
                f"flowgap sweep --resume {folder}",
                file=sys.stderr,
            )
        else:
            print(
                "flowgap: interrupted; files already written are complete",
                file=sys.stderr,
            )
        return code
    except Exception as err:  # a run failure: one line, the details under --debug
        if debug:
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"flowgap: {type(err).__name__}: {first}", file=sys.stderr)
        return 1


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
