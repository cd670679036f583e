"""Which gradient-descent steps are saved.

A schedule is a static tuple of segments (count, stride): `count` saves, each
`stride` steps after the previous one. Strided saves are one segment; log-spaced
saves from `log_save_steps` are one segment per decade, so a 10⁶-step run saved
at ~55 points compiles a handful of nested scans and never holds every step.
"""

import numbers

import numpy as np

from .._checks import positive_int


def log_save_steps(steps: int, per_decade: int = 9) -> tuple[int, ...]:
    """Roughly log-spaced save steps 0, 1, …, `steps` with constant spacing inside
    each decade (for `per_decade=9`: 1…9, 10…90, 100…900, …), plus `steps`.

    Constant spacing inside a decade keeps the number of scan segments at about
    log₁₀(steps), independent of how many points are saved.
    """
    steps = positive_int("steps", steps)
    per_decade = positive_int("per_decade", per_decade)
    out = {0, steps}
    decade = 1
    while decade <= steps:
        stride = max(1, (9 * decade) // per_decade)
        out.update(range(decade, min(10 * decade, steps + 1), stride))
        decade *= 10
    return tuple(sorted(out))


def schedule(steps: int, save_every, save_steps) -> tuple[tuple[int, int], ...]:
    """Segments (count, stride) covering 0 → `steps`; the save at step 0 is implicit."""
    if save_steps is None:
        every = positive_int("save_every", save_every)
        if steps % every:
            raise ValueError(
                f"`save_every` must divide `steps` ({steps}), got {every}; or pass "
                "explicit `save_steps`."
            )
        return ((steps // every, every),)
    points = np.asarray(save_steps)
    if points.ndim != 1 or not all(
        isinstance(p, numbers.Integral) for p in points.tolist()
    ):
        raise ValueError("`save_steps` must be a 1-D sequence of integers.")
    if points.size and (points.min() < 0 or points.max() > steps):
        raise ValueError(f"`save_steps` must lie in [0, steps={steps}].")
    if np.any(np.diff(points) <= 0):
        raise ValueError("`save_steps` must be strictly increasing.")
    points = np.union1d(points, [0, steps]).astype(int)
    segments: list[list[int]] = []
    for gap in np.diff(points).tolist():
        if segments and segments[-1][1] == gap:
            segments[-1][0] += 1
        else:
            segments.append([1, gap])
    return tuple((count, stride) for count, stride in segments)


def saved_steps(segments) -> np.ndarray:
    """The step index of every save, including step 0."""
    strides = [stride for count, stride in segments for _ in range(count)]
    return np.concatenate([[0], np.cumsum(strides)]).astype(int)
