"""A tqdm bar driven from inside a jitted scan through `jax.debug.callback`."""

import jax
import numpy as np
from tqdm.auto import tqdm

_bars: list = []


def open_bar(total: int, desc: str):
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    _bars.append(bar)
    return bar


def close_bar(bar) -> None:
    bar.close()
    if bar in _bars:
        _bars.remove(bar)


def _set(step) -> None:
    if _bars:
        bar = _bars[-1]
        # Under vmap the callback sees every run's step: show the slowest.
        bar.n = int(np.min(np.asarray(step)))
        bar.refresh()


def report(step) -> None:
    """Move the innermost open bar to `step` (no-op when no bar is open)."""
    jax.debug.callback(_set, step)
