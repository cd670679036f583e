"""Every notebook runs top to bottom (with FLOWGAP_QUICK=1 for small settings)."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


# notebooks whose claims a default-suite test already asserts on the same quick
# run of their job (tests/test_central_flow_study.py, test_sgd_vs_sde_study.py,
# test_wn_hessian.py, test_wn_robust_bias.py; invariants: test_cli.py's quick
# job and test_invariants.py's toolkit calls); they run with `-m slow`
_COVERED = {"central_flow", "sgd_vs_sde", "wn_hessian", "wn_robust_bias", "invariants"}
_CASES = [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in _COVERED else p
    for p in NOTEBOOKS
]


@pytest.mark.parametrize("path", _CASES, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("FLOWGAP_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors


def test_there_is_a_quickstart():
    assert any(p.stem == "quickstart" for p in NOTEBOOKS)
    assert os.path.getsize(NOTEBOOKS[0]) > 0
