"""The `flowgap` command line.

    flowgap list
    flowgap run NAME [--quick] [--out DIR] [--seed N] [--dtype float64|float32]
                     [--set key=value ...] [--force] [--debug]

Bad input prints one line and exits with code 2 (`--debug` shows the traceback).
"""

import argparse
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
    for p in (parser, run, *names.choices.values()):
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def _run(args) -> int:
    from .experiments import run

    overrides = {}
    for key, value in args.overrides:
        if key in overrides:
            raise _UsageError(f"setting `{key}` given twice")
        overrides[key] = value
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
    print(f"\nwrote {folder}/ (settings.json, results.json, arrays.npz, figure.png)")
    return 0


def main(argv=None) -> int:
    from .experiments import EXPERIMENTS, SettingError
    from .experiments._output import OutputError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            for experiment in EXPERIMENTS.values():
                summary = experiment.summary.split(": ", 1)[-1]
                print(f"{experiment.name:<18} {summary}")
            return 0
        return _run(args)
    except (_UsageError, SettingError, OutputError, ValueError, TypeError) as err:
        if debug:
            traceback.print_exc()
        print(f"flowgap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "flowgap: interrupted; files already written are complete", file=sys.stderr
        )
        return 130
    except Exception as err:  # a run failure: one line, the details under --debug
        if debug:
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"flowgap: {type(err).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
