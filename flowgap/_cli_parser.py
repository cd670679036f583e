"""The `flowgap` command line's parsers: `flowgap --help`, `flowgap run NAME
--help` and `flowgap list` import neither JAX nor the jobs (job names and
summaries are read from the job modules' source); a job's settings, which need
its module, are formatted only when its help is printed."""

import argparse
import ast
import functools
import pathlib
import re
import tokenize

# The job listed first, as in `flowgap.experiments.EXPERIMENTS`.
_HEADLINE = "step-vs-flow"


class Parser(argparse.ArgumentParser):
    """One-line errors; an epilog computed only when the help is printed (the
    settings of a job need its module, and so JAX)."""

    def __init__(self, *args, epilog_from=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._epilog_from = epilog_from

    def format_help(self):
        if self._epilog_from is not None:
            self.epilog, self._epilog_from = self._epilog_from(), None
        return super().format_help()

    def error(self, message):  # one line, exit 2 (argparse's default prints usage)
        raise UsageError(message)


class UsageError(Exception):
    pass


@functools.cache
def jobs() -> dict[str, str]:
    """Job name → summary, read without importing anything: a job is a module of
    `flowgap/experiments` with a top-level `NAME = "..."`, and its summary is the
    first line of its docstring (the registry's rule; tests check they agree).
    Only the docstring and that line are parsed (a few ms for every job)."""
    folder = pathlib.Path(__file__).parent / "experiments"
    jobs = {}
    for path in sorted(folder.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = re.search(r"^NAME\s*=\s*(.+?)\s*(#.*)?$", source, re.MULTILINE)
        if name is None:
            continue
        try:
            jobs[ast.literal_eval(name.group(1))] = _summary(source)
        except (ValueError, SyntaxError):
            continue  # not a literal NAME: tests see it missing from the listing
    return dict(sorted(jobs.items(), key=lambda item: (item[0] != _HEADLINE, item[0])))


def listing() -> list[str]:
    """`flowgap list`: one line per job, its name and its summary."""
    return [f"{name:<18} {text.split(': ', 1)[-1]}" for name, text in jobs().items()]


def _summary(source: str) -> str:
    """The first line of the module docstring of `source` (its first token)."""
    lines = iter(source.splitlines(keepends=True))
    for token in tokenize.generate_tokens(lambda: next(lines, "")):
        if token.type == tokenize.STRING:
            doc = ast.literal_eval(token.string)
            return (doc.strip().splitlines() or [""])[0]
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            break
    return ""


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def _job_epilog(name: str):
    def epilog() -> str:
        from .experiments import EXPERIMENTS

        experiment = EXPERIMENTS[name]
        return (
            "settings (--set key=value; defaults shown):\n"
            + "\n".join("  " + s.describe() for s in experiment.settings)
            + "\n\n--quick uses: "
            + ", ".join(f"{k}={v}" for k, v in experiment.quick.items())
        )

    return epilog


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flowgap",
        description=(
            "Gradient descent vs the exact gradient flow of the same model, on one "
            "clock t = k·lr."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments (flowgap run NAME --help for its settings):\n"
        + "\n".join(f"  {line}" for line in listing()),
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser("list", help="list the experiments")
    run = commands.add_parser("run", help="run an experiment (flowgap run NAME --help)")
    names = run.add_subparsers(dest="name", required=True, parser_class=Parser)
    for name, summary in jobs().items():
        sub = names.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog_from=_job_epilog(name),
        )
        sub.add_argument(
            "--quick", action="store_true", help="tiny settings, for tests"
        )
        sub.add_argument("--out", help="output folder (default: a new one under runs/)")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        _add_run_options(sub)
    sweep = _sweep_parser(commands)
    for p in (parser, run, sweep, *names.choices.values()):
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def _sweep_epilog() -> str:
    from .experiments import EXPERIMENTS

    return "sweepable experiments:\n" + "\n".join(
        f"  {e.name}: axes {', '.join(e.sweep.axes)}; heat map of {e.sweep.metric}"
        for e in EXPERIMENTS.values()
        if e.sweep is not None
    )


def _sweep_parser(commands):
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
        epilog_from=_sweep_epilog,
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
    _add_run_options(sweep)
    return sweep


def _add_run_options(parser) -> None:
    """The options `flowgap run NAME` and `flowgap sweep` share: precision,
    setting changes, overwriting and progress bars."""
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision (default float64)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="change a setting (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
