"""Reproducible experiments: `flowgap run NAME`, or `run(NAME, ...)` from Python."""

from ._edge_of_stability import EdgeOfStabilityResult as EdgeOfStabilityResult
from ._gap import GapResult as GapResult
from ._invariants import InvariantsResult as InvariantsResult
from ._registry import (
    EXPERIMENTS as EXPERIMENTS,
)
from ._registry import (
    Experiment as Experiment,
)
from ._registry import (
    run as run,
)
from ._settings import Setting as Setting
from ._settings import SettingError as SettingError
from ._step_vs_flow import StepVsFlowResult as StepVsFlowResult
