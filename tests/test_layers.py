"""The architecture: layers bottom to top (base → models → problems → dynamics →
analysis, invariants → sweeps → experiments → CLI), no import cycles, and a
light `import flowgap`."""

import pathlib
import subprocess
import sys

import grimp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_layer_contract():
    """`lint-imports` checks the contract in pyproject.toml ([tool.importlinter])."""
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _cycle(graph) -> list[str] | None:
    """One import cycle between flowgap's modules (function-level imports
    included), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if not other.startswith("flowgap"):
                continue
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycles():
    graph = grimp.build_graph("flowgap")
    # a package's __init__ re-exporting its private modules is not a cycle with
    # them; every other edge is
    for package in [m for m in graph.modules if (ROOT / m.replace(".", "/")).is_dir()]:
        for child in graph.find_children(package):
            if graph.direct_import_exists(importer=child, imported=package):
                continue
            if graph.direct_import_exists(importer=package, imported=child):
                graph.remove_import(importer=package, imported=child)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_import_flowgap_leaves_experiments_and_cli_unloaded():
    code = (
        "import sys, flowgap; "
        "print(sorted(m for m in sys.modules if m.startswith(('flowgap.experiments', "
        "'flowgap._cli', 'matplotlib'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
