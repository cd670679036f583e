"""Trainers on one clock: jitted gradient descent and SGD, and their Diffrax
flows and SDEs."""

from ._central import (
    CentralFlowField as CentralFlowField,
)
from ._central import (
    central_flow as central_flow,
)
from ._central_rmsprop import (
    RMSPropCentralFlowField as RMSPropCentralFlowField,
)
from ._central_rmsprop import (
    rmsprop_central_flow as rmsprop_central_flow,
)
from ._compare import compare as compare
from ._descent import gradient_descent as gradient_descent
from ._fallback import gradient_flow_with_fallback as gradient_flow_with_fallback
from ._field import (
    AbstractField as AbstractField,
)
from ._field import (
    GradientField as GradientField,
)
from ._flat import FlatLayout as FlatLayout
from ._flow import gradient_flow as gradient_flow
from ._ladder import MovesFor as MovesFor
from ._ladder import ladder_descent as ladder_descent
from ._ladder import ladder_steps as ladder_steps
from ._minibatch import Minibatches as Minibatches
from ._modified import (
    ModifiedField as ModifiedField,
)
from ._modified import (
    SeriesField as SeriesField,
)
from ._modified import (
    modified_flow as modified_flow,
)
from ._momentum import (
    MomentumField as MomentumField,
)
from ._momentum import (
    momentum_flow as momentum_flow,
)
from ._noise import AbstractNoise as AbstractNoise
from ._noise import MinibatchNoise as MinibatchNoise
from ._objective import Objective as Objective
from ._psd_qp import PSDQPSolution as PSDQPSolution
from ._psd_qp import solve_psd_qp as solve_psd_qp
from ._rates import uniform_rates as uniform_rates
from ._results import (
    RESULTS as RESULTS,
)
from ._results import (
    DivergenceError as DivergenceError,
)
from ._results import (
    SolverError as SolverError,
)
from ._results import (
    status_code as status_code,
)
from ._results import (
    status_name as status_name,
)
from ._rmsprop import (
    RMSPropField as RMSPropField,
)
from ._rmsprop import (
    rmsprop_flow as rmsprop_flow,
)
from ._rmsprop import (
    rmsprop_optimizer as rmsprop_optimizer,
)
from ._saddle_skip import saddle_skip as saddle_skip
from ._saves import log_save_steps as log_save_steps
from ._stability import StabilityWarning as StabilityWarning
from ._stability import check_stability as check_stability
from ._stability import stable_learning_rate as stable_learning_rate
from ._stochastic import BatchLoss as BatchLoss
from ._stochastic import stochastic_descent as stochastic_descent
from ._stochastic_flow import stochastic_flow as stochastic_flow
from ._stopping import (
    AbstractStopCondition as AbstractStopCondition,
)
from ._stopping import (
    GradNormBelow as GradNormBelow,
)
from ._stopping import (
    LossBelow as LossBelow,
)
from ._trajectory import Trajectory as Trajectory
