"""Reproducible experiments: `flowgap run NAME`, or `run(NAME, ...)` from Python."""

from ._edge_of_stability import EdgeOfStabilityResult as EdgeOfStabilityResult
from ._figure import Line as Line
from ._figure import Panel as Panel
from ._figure import Series as Series
from ._figure import render_figure as render_figure
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
from ._result import ExperimentResult as ExperimentResult
from ._saddle_to_saddle import SaddleToSaddleResult as SaddleToSaddleResult
from ._sensitivity import SensitivityResult as SensitivityResult
from ._settings import Config as Config
from ._settings import Setting as Setting
from ._settings import SettingError as SettingError
from ._step_vs_flow import StepVsFlowResult as StepVsFlowResult
from ._sweep_runner import SweepRun as SweepRun
from ._sweep_runner import resume_sweep as resume_sweep
from ._sweep_runner import run_sweep as run_sweep
from ._sweepable import Sweepable as Sweepable
from ._table import Column as Column
from ._table import render_table as render_table
from ._wn_hessian import WNHessianResult as WNHessianResult
from ._wn_robust_bias import WNRobustBiasResult as WNRobustBiasResult
