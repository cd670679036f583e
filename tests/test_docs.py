"""The documentation site builds with `mkdocs build --strict`, and every number on
its study pages is rendered from the committed run folders (docs/results/NAME/) by
docs/gen_results.py, so a table cannot drift from its results file."""

import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
STUDIES = DOCS / "studies"
SNIPPET = re.compile(r'^--8<-- "docs/results/([^/"]+)/([^"]+)"\s*$', re.M)


def _gen_results():
    path = DOCS / "gen_results.py"
    spec = importlib.util.spec_from_file_location("gen_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study_pages() -> dict[str, str]:
    return {p.stem: p.read_text() for p in STUDIES.glob("*.md") if p.stem != "index"}


def _included() -> list[tuple[str, str]]:
    """(job, snippet file) for every results snippet a study page includes."""
    return sorted(
        {pair for text in _study_pages().values() for pair in SNIPPET.findall(text)}
    )


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    for name in _study_pages():
        page = (site / "studies" / name / "index.html").read_text()
        assert "--8<--" not in page, f"studies/{name}: a snippet was not included"
        assert f"results/{name}/figure.png" in page
    assert (site / "api" / "dynamics" / "index.html").exists()
    assert (site / "notebooks" / "quickstart" / "index.html").exists()


def test_every_job_has_a_study_page_with_its_results():
    gen = _gen_results()
    pages = _study_pages()
    jobs = set(gen.experiments())
    assert set(pages) == jobs, (
        f"one page per job, docs/studies/NAME.md: missing {sorted(jobs - set(pages))}"
        f", without a job {sorted(set(pages) - jobs)}"
    )
    assert set(gen.PROFILE) == jobs, "list every job in PROFILE of docs/gen_results.py"
    for name, text in pages.items():
        for snippet in ("settings.md", "table.md"):
            assert f'--8<-- "docs/results/{name}/{snippet}"' in text, (name, snippet)
        assert f"../results/{name}/figure.png" in text, name
        folder = DOCS / "results" / name
        for filename in ("settings.json", "results.json", "arrays.npz", "figure.png"):
            assert (folder / filename).is_file(), f"missing {folder / filename}"


@pytest.mark.parametrize(
    "job, snippet", _included(), ids=[f"{j}/{s}" for j, s in _included()]
)
def test_snippet_matches_its_results(job, snippet):
    gen = _gen_results()
    folder = DOCS / "results" / job
    path = folder / snippet
    assert path.is_file(), f"{path} is missing: run python docs/gen_results.py {job}"
    rendered = gen.render(folder)
    assert snippet in rendered, f"gen_results.py renders no {snippet}"
    assert path.read_text() == rendered[snippet], (
        f"{path} differs from what gen_results.py renders from {folder}/*.json; "
        f"run: python docs/gen_results.py --render-only {job}"
    )


def test_settings_snippet_states_the_run():
    # the numbers are labelled with the command that produced them, read from
    # settings.json (e.g. --quick), not typed by hand
    gen = _gen_results()
    for job, snippet in _included():
        if snippet != "settings.md":
            continue
        meta, _, _ = gen.load(DOCS / "results" / job)
        first = (DOCS / "results" / job / snippet).read_text().splitlines()[0]
        assert f"flowgap run {job}" in first
        assert ("--quick" in first) == bool(meta["quick"])


def _public(module) -> list[str]:
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]


PACKAGES = ("dynamics", "models", "problems", "analysis", "invariants", "sweeps")


@pytest.mark.parametrize("package", PACKAGES + ("experiments",))
def test_api_reference_covers_every_public_name(package):
    module = importlib.import_module(f"flowgap.{package}")
    page = (DOCS / "api" / f"{package}.md").read_text()
    missing = [n for n in _public(module) if f"::: flowgap.{package}.{n}\n" not in page]
    assert not missing, f"add to docs/api/{package}.md: {missing}"


def test_api_reference_lists_the_top_level_names():
    import flowgap

    page = (DOCS / "api" / "flowgap.md").read_text()
    missing = [n for n in flowgap.__all__ if f"flowgap.{n}" not in page]
    assert not missing, f"add to docs/api/flowgap.md: {missing}"


def test_docs_do_not_cite_the_spec():
    spec = "science" + ".md"
    sources = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    sources += sorted(DOCS.rglob("*.md")) + sorted(DOCS.glob("*.py"))
    citing = [str(p.relative_to(ROOT)) for p in sources if spec in p.read_text()]
    assert not citing


def test_gap_toolkit_snippet_intervals_contain_the_orders():
    """The gap-toolkit page's snippet runs as written; with `correction=True` its
    95% intervals contain 1, 2 and 3, and the straight fit on the same gaps
    misses 3 from below (the page says so): the O(η) correction read as slope."""
    from flowgap.analysis import loglog_slope

    page = (DOCS / "gap-toolkit.md").read_text()
    snippet = re.search(r"^```python\n(.*?)^```", page, re.S | re.M).group(1)
    namespace = {"__name__": "gap_toolkit"}
    exec(compile(snippet, "docs/gap-toolkit.md", "exec"), namespace)
    table = namespace["table"]
    for order, fit in table.fits.items():
        low, high = fit["ci"]
        assert low < order + 1 < high, (order, fit)
    low, high = loglog_slope(table.lrs, table.gaps[2])["ci"]
    assert 2.99 < low < high < 3
