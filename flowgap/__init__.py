"""flowgap: gradient descent and the exact gradient flow of the same Equinox model,
on one clock t = k·η."""

import importlib.metadata

from . import analysis as analysis, dynamics as dynamics, invariants as invariants
from . import models as models
from . import experiments as experiments, problems as problems
from .dynamics import (
    RESULTS as RESULTS,
    DivergenceError as DivergenceError,
    SolverError as SolverError,
    Trajectory as Trajectory,
    gradient_descent as gradient_descent,
    gradient_flow as gradient_flow,
)

__version__ = importlib.metadata.version("flowgap")
