"""Grid axes written on the command line: `--grid scale=1e-3:10:9:log`."""

import math

import numpy as np


def parse_axis(text: str) -> tuple[str, np.ndarray]:
    """Parse `NAME=START:STOP:NUM[:log|lin]` or `NAME=V1,V2,...`.

    `START:STOP:NUM:log` gives NUM values spaced evenly in log between START and
    STOP inclusive (`np.geomspace`); `:lin` (the default) evenly spaced
    (`np.linspace`). A comma list gives the values as written.

    **Returns:** `(name, values)`, values a 1-D float64 array.
    """
    if "=" not in text:
        raise ValueError(
            f"`--grid` expects NAME=START:STOP:NUM[:log] or NAME=V1,V2; got {text!r}"
        )
    name, spec = (part.strip() for part in text.split("=", 1))
    if not name.isidentifier():
        raise ValueError(f"`--grid` axis name must be an identifier, got {name!r}")
    if not spec:
        raise ValueError(f"`--grid` axis `{name}` is empty")
    if ":" in spec:
        values = _range(name, spec)
    else:
        values = np.array([_number(name, part) for part in spec.split(",")])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`--grid` axis `{name}` must be finite, got {spec!r}")
    return name, values


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"`--grid` axis `{name}`: cannot read {text!r} as a number"
        ) from None


def _range(name: str, spec: str) -> np.ndarray:
    parts = spec.split(":")
    spacing = "lin"
    if parts[-1] in ("log", "lin"):
        spacing = parts.pop()
    if len(parts) != 3:
        raise ValueError(
            f"`--grid` axis `{name}` must be START:STOP:NUM[:log|lin], got {spec!r}"
        )
    start, stop = _number(name, parts[0]), _number(name, parts[1])
    try:
        num = int(parts[2])
    except ValueError:
        num = 0
    if num < 1:
        raise ValueError(
            f"`--grid` axis `{name}`: NUM must be a positive integer, got {parts[2]!r}"
        )
    if spacing == "log":
        if not (start > 0 and stop > 0 and math.isfinite(start * stop)):
            raise ValueError(
                f"`--grid` axis `{name}`: log needs START, STOP > 0, got {spec!r}"
            )
        return np.geomspace(start, stop, num)
    return np.linspace(start, stop, num)
