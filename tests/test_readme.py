"""README.md is a working front page: its Python runs, its links resolve, it is
short."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_python_blocks_run_in_order():
    # One namespace, in order, as a reader would paste them: later blocks use
    # earlier names. The "your own model" block asserts that GD at a small lr
    # stays on the flow of an eqx.nn.MLP.
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 2
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    # the first block's point: halving lr halves the step–flow gap (first order)
    assert 1.8 < float(namespace["ratio"]) < 2.2


def test_readme_is_a_front_page():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; theory goes in docs/"
    head = "\n".join(lines[:10])
    assert "make demo" in head and "make test" in head
    assert "science" + ".md" not in text  # the spec is not part of the product


def test_readme_links_and_figure_exist():
    text = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t)]
    assert any(t.endswith(".png") for t in local), "the README shows one figure"
    missing = [t for t in local if t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
