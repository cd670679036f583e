"""flowgap: gradient descent and the exact gradient flow of the same Equinox model,
on one clock t = k·η."""

import importlib
import importlib.metadata
import typing

if typing.TYPE_CHECKING:  # the names below load on first use (PEP 562 `__getattr__`)
    from . import analysis as analysis
    from . import dynamics as dynamics
    from . import experiments as experiments
    from . import invariants as invariants
    from . import models as models
    from . import problems as problems
    from . import sweeps as sweeps
    from ._precision import PrecisionWarning as PrecisionWarning
    from .dynamics import RESULTS as RESULTS
    from .dynamics import DivergenceError as DivergenceError
    from .dynamics import SolverError as SolverError
    from .dynamics import Trajectory as Trajectory
    from .dynamics import central_flow as central_flow
    from .dynamics import gradient_descent as gradient_descent
    from .dynamics import gradient_flow as gradient_flow
    from .dynamics import rmsprop_central_flow as rmsprop_central_flow
    from .dynamics import stochastic_descent as stochastic_descent
    from .dynamics import stochastic_flow as stochastic_flow
    from .sweeps import sweep as sweep

__version__ = importlib.metadata.version("flowgap")

# `import flowgap` loads nothing else: the subpackages (JAX with them) load on
# first use, so `flowgap --help` (whose `flowgap._cli` imports this package
# first) starts without JAX.
_SUBPACKAGES = (
    "analysis",
    "dynamics",
    "experiments",
    "invariants",
    "models",
    "problems",
    "sweeps",
)
_EXPORTS = {
    "PrecisionWarning": "._precision",
    "RESULTS": ".dynamics",
    "DivergenceError": ".dynamics",
    "SolverError": ".dynamics",
    "Trajectory": ".dynamics",
    "central_flow": ".dynamics",
    "gradient_descent": ".dynamics",
    "gradient_flow": ".dynamics",
    "rmsprop_central_flow": ".dynamics",
    "stochastic_descent": ".dynamics",
    "stochastic_flow": ".dynamics",
    "sweep": ".sweeps",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowgap' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBPACKAGES, *_EXPORTS})
