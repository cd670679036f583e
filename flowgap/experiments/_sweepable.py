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
      (static Python values, after `prepare`); it must be vmappable in `key` and the
      axes, and its output must include `"status"`, an int (0 = success, as
      `flowgap.RESULTS`) so a failed run is flagged without poisoning the others.
    - `metric`: the output shown by the summary heat map (first two axes; mean
      over seeds and any further axes).
    - `prepare`: optional `prepare(settings, grid) -> settings`, given the resolved
      settings and the grid's concrete axes ({name: values}, no `seed`): the
      settings `point` sees, with what the whole grid fixes statically (e.g. the
      length of a loop that must fit every point). It raises `SettingError` for a
      grid the experiment cannot run. Default: the settings as they are.
    - `context`: optional `context(settings) -> str`, what every run of the sweep
      shares that a reader of the table and figure must know (e.g. the horizon);
      it is printed in their titles.
    - `flag`: optional name of a 0/1 output marking successful runs to count apart
      (e.g. runs whose result left the regime the experiment measures); the table
      and figure mark cells holding such runs with †k.
    - `flag_meaning`: what `flag` means, with its threshold, for the table's notes.
    """

    axes: tuple[str, ...]
    point: Callable
    metric: str
    prepare: Callable | None = None
    context: Callable | None = None
    flag: str | None = None
    flag_meaning: str = ""

    def settings_for(self, settings, grid) -> dict:
        """The settings `point` sees over `grid` (see `prepare`)."""
        if self.prepare is None:
            return dict(settings)
        return self.prepare(dict(settings), grid)

    def describe(self, settings) -> str:
        """The sweep's shared context for titles; "" without `context`."""
        return "" if self.context is None else self.context(settings)
