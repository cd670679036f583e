"""Results tables rendered from column specs, shared by every experiment."""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a results table.

    - `key`: the row field shown, or a callable `row -> value`;
    - `header`: the column title (default: `key`);
    - `fmt`: a format spec for numbers (`".3e"`, `">7.3f"` without the width
      is fine: widths are computed); a pair of numbers (a confidence interval)
      is shown as `[a, b]`, each formatted with `fmt`;
    - `missing`: shown for `None` and NaN values.

    Text is left-aligned and numbers right-aligned.
    """

    key: str | Callable[[Mapping], Any]
    header: str | None = None
    fmt: str = ""
    missing: str = "—"

    @property
    def title(self) -> str:
        return self.header if self.header is not None else str(self.key)

    def value(self, row: Mapping):
        return self.key(row) if callable(self.key) else row.get(self.key)

    def cell(self, row: Mapping) -> tuple[str, bool]:
        """The cell's text and whether it is numeric (right-aligned)."""
        return format_value(self.value(row), self.fmt, self.missing)


def format_value(value, fmt: str = "", missing: str = "—") -> tuple[str, bool]:
    """`value` as text, and whether it is a number (or a pair of numbers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing, True
    if isinstance(value, bool | str):
        return str(value), False
    if isinstance(value, tuple | list) and len(value) == 2:
        low, high = (format_value(v, fmt, missing)[0] for v in value)
        return f"[{low}, {high}]", True
    if isinstance(value, int | float) or hasattr(value, "__float__"):
        return format(value, fmt), True
    return str(value), False


def render_table(
    rows: Sequence[Mapping],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """`rows` as a plain-text table: an optional title line, the header, a rule,
    one line per row, then `notes` after a blank line."""
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = [
        max([len(c.title)] + [len(line[i][0]) for line in cells])
        for i, c in enumerate(columns)
    ]
    numeric = [
        all(line[i][1] for line in cells) if cells else False
        for i in range(len(columns))
    ]

    def join(texts):
        parts = (
            f"{text:>{width}}" if right else f"{text:<{width}}"
            for text, width, right in zip(texts, widths, numeric)
        )
        return "  ".join(parts).rstrip()

    head = join([c.title for c in columns])
    lines = [] if title is None else [title]
    lines += [head, "-" * len(head)]
    lines += [join([text for text, _ in line]) for line in cells]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
