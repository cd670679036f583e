"""Regenerate the results shown on the docs' study pages.

Every number on a study page comes from a run folder under `docs/results/NAME/`,
written by the command line exactly as a user would run it:

    flowgap run NAME [--quick] --out docs/results/NAME --force

From that folder this script renders two Markdown snippets, which the study pages
include with `pymdown-extensions`' snippets (`--8<--`):

- `table.md`: the job's table, rebuilt from `settings.json`, `results.json` and
  `arrays.npz` by the job's own result class (the text `flowgap run` prints);
- `settings.md`: the command and every setting that produced the numbers, read
  from `settings.json`.

`tests/test_docs.py` re-renders both from the committed run folders and compares,
so a table can never drift from its results file.

Usage (from the repository root):

    python docs/gen_results.py                 # the docs profile (see PROFILE)
    python docs/gen_results.py --full          # every job at its default settings
    python docs/gen_results.py gap invariants  # some jobs only
    python docs/gen_results.py --render-only   # re-render snippets, run nothing

`make docs-results` runs `--full` (tens of minutes on 2 CPU cores: wn-robust-bias
≈ 8 min, wn-hessian ≈ 5 min); `make docs-results-quick` runs the docs profile.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"

#: The docs profile: which jobs the committed pages show with `--quick` settings
#: (True) and which at their defaults (False). `--full` sets every job to False.
PROFILE = {
    "step-vs-flow": False,
    "invariants": True,
    "gap": True,
    "edge-of-stability": True,
    "wn-robust-bias": True,
    "wn-hessian": True,
    "saddle-to-saddle": True,
    "saddle-skip": True,
    "sensitivity": True,
    "central-flow": True,
    "sgd-vs-sde": True,
}


def experiments() -> dict:
    from flowgap.experiments import EXPERIMENTS

    return EXPERIMENTS


def result_class(name: str) -> type:
    """The job's result class: the one `ExperimentResult` subclass its module
    defines or re-exports."""
    from flowgap.experiments import ExperimentResult

    module = sys.modules[experiments()[name].run.__module__]
    found = {
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ExperimentResult)
        and value is not ExperimentResult
    }
    if len(found) != 1:
        raise LookupError(f"{module.__name__} has {len(found)} result classes, not 1")
    return found.pop()


def load(folder: pathlib.Path) -> tuple[dict, dict, dict]:
    """(settings.json, results.json, arrays.npz as a dict) of a run folder."""
    meta = json.loads((folder / "settings.json").read_text())
    results = json.loads((folder / "results.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        curves = {key: arrays[key] for key in arrays.files}
    return meta, results, curves


def render_table(folder: pathlib.Path) -> str:
    """The job's table as `flowgap run` prints it, in a Markdown code block."""
    meta, results, curves = load(folder)
    cls = result_class(meta["experiment"])
    result = cls(
        settings=meta["settings"],
        rows=results["rows"],
        fits=results["fits"],
        curves=curves,
    )
    return "```text\n" + result.table().rstrip() + "\n```\n"


def _value(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "–"
    return str(value)


def render_settings(folder: pathlib.Path) -> str:
    """The command and the settings that produced a run folder, as Markdown."""
    meta, _, _ = load(folder)
    name = meta["experiment"]
    documented = {s.name: s for s in experiments()[name].settings}
    flags = " --quick" if meta["quick"] else ""
    flags += f" --seed {meta['seed']} --dtype {meta['dtype']}"
    lines = [
        f"These numbers were produced by `flowgap run {name}{flags}` "
        f"(flowgap {meta['flowgap']}"
        + (", the job's `--quick` settings" if meta["quick"] else ", default settings")
        + "). Regenerate them with `python docs/gen_results.py "
        + name
        + ("" if meta["quick"] else " --full")
        + "`.",
        "",
        "| setting | value used | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, value in meta["settings"].items():
        setting = documented.get(key)
        default = _value(setting.default) if setting is not None else "–"
        meaning = setting.help if setting is not None else ""
        used = _value(value)
        if used != default:
            used = f"**{used}**"
        meaning = meaning.replace("|", "\\|")
        lines.append(f"| `{key}` | {used} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def render(folder: pathlib.Path) -> dict[str, str]:
    """Snippet file name → its text, for one run folder."""
    return {"table.md": render_table(folder), "settings.md": render_settings(folder)}


def write_snippets(folder: pathlib.Path) -> None:
    for filename, text in render(folder).items():
        (folder / filename).write_text(text)


def run_job(name: str, quick: bool) -> None:
    """`flowgap run NAME [--quick] --out docs/results/NAME --force`."""
    folder = RESULTS / name
    command = [sys.executable, "-m", "flowgap", "run", name, "--out", str(folder)]
    command += ["--force", "--no-progress"] + (["--quick"] if quick else [])
    print("$", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="jobs (default: all)")
    parser.add_argument(
        "--full", action="store_true", help="default settings for every job"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only re-render table.md and settings.md from the run folders",
    )
    args = parser.parse_args(argv)
    names = args.names or list(PROFILE)
    unknown = sorted(set(names) - set(experiments()))
    if unknown:
        parser.error(f"unknown jobs: {', '.join(unknown)}")
    for name in names:
        if not args.render_only:
            run_job(name, quick=False if args.full else PROFILE.get(name, True))
        write_snippets(RESULTS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
