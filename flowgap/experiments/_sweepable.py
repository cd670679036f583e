"""What makes an experiment sweepable by `flowgap sweep NAME --grid ...`."""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Sweepable:
    """How `flowgap sweep` runs one experiment over a grid as one compiled program.

    An experiment module that can be swept defines `SWEEP = Sweepable(...)`.

    **Arguments:**

    - `axes`: the float settings that may be grid axes. They reach `point` as traced
      scalars, so the whole grid compiles once. `seed` is always an extra axis
      (`--seeds N`), turned into a key. An axis that is also a setting is checked
      like that setting; any other (e.g. `lr`) must be finite and > 0.
    - `point`: `point(settings, *, key, **axes) -> dict[str, scalar array]`, one run
      of the experiment at one grid point. `settings` holds every other setting
      (static Python values); it must be vmappable in `key` and the axes, and its
      output must include `"status"`, an int (0 = success, as `flowgap.RESULTS`) so a
      failed run is flagged without poisoning the others.
    - `metric`: the output shown by the summary heat map (first two axes; mean
      over seeds and any further axes).
    """

    axes: tuple[str, ...]
    point: Callable
    metric: str
