"""Reproducible experiments: `flowgap run NAME`, or `run(NAME, ...)` from Python."""

from ._registry import (
    EXPERIMENTS as EXPERIMENTS,
    Experiment as Experiment,
    run as run,
)
from ._settings import Setting as Setting, SettingError as SettingError
from ._step_vs_flow import StepVsFlowResult as StepVsFlowResult
from ._invariants import InvariantsResult as InvariantsResult
