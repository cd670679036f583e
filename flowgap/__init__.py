"""flowgap: gradient descent and the exact gradient flow of the same Equinox model,
on one clock t = k·η."""

import importlib.metadata

from . import analysis as analysis
from . import dynamics as dynamics
from . import invariants as invariants
from . import models as models
from . import problems as problems
from . import sweeps as sweeps
from ._precision import PrecisionWarning as PrecisionWarning
from .dynamics import (
    RESULTS as RESULTS,
)
from .dynamics import (
    DivergenceError as DivergenceError,
)
from .dynamics import (
    SolverError as SolverError,
)
from .dynamics import (
    Trajectory as Trajectory,
)
from .dynamics import (
    central_flow as central_flow,
)
from .dynamics import (
    gradient_descent as gradient_descent,
)
from .dynamics import (
    gradient_flow as gradient_flow,
)
from .dynamics import (
    rmsprop_central_flow as rmsprop_central_flow,
)
from .dynamics import (
    stochastic_descent as stochastic_descent,
)
from .dynamics import (
    stochastic_flow as stochastic_flow,
)
from .sweeps import sweep as sweep

__version__ = importlib.metadata.version("flowgap")


def __getattr__(name):
    # `flowgap.experiments` (the CLI's jobs, matplotlib included) loads on first
    # use, so `import flowgap` stays the library alone.
    if name == "experiments":
        import importlib

        return importlib.import_module(".experiments", __name__)
    raise AttributeError(f"module 'flowgap' has no attribute {name!r}")
