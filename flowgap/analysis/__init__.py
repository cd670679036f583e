"""Analysis: implicit-bias limits, gap and weak-error exponents, curvature, fits."""

from ._curvature import (
    LanczosInfo as LanczosInfo,
)
from ._curvature import (
    lanczos as lanczos,
)
from ._curvature import (
    predictor_hessian_norm as predictor_hessian_norm,
)
from ._curvature import (
    sharpness as sharpness,
)
from ._curvature import (
    track_sharpness as track_sharpness,
)
from ._effective_scale import effective_scale as effective_scale
from ._fit import loglog_slope as loglog_slope
from ._gap import (
    GapTable as GapTable,
)
from ._gap import (
    gap_exponent as gap_exponent,
)
from ._gap import (
    parameter_distance as parameter_distance,
)
from ._implicit_bias import (
    woodworth_limit as woodworth_limit,
)
from ._implicit_bias import (
    woodworth_potential as woodworth_potential,
)
from ._implicit_derivative import (
    woodworth_limit_derivative as woodworth_limit_derivative,
)
from ._sensitivity import Sensitivity as Sensitivity
from ._sensitivity import sensitivity as sensitivity
from ._sgd_moments import covariance as covariance
from ._sgd_moments import sde_moments as sde_moments
from ._sgd_moments import sgd_moments as sgd_moments
from ._stages import Stage as Stage
from ._stages import alignment_ratio as alignment_ratio
from ._stages import detect_stages as detect_stages
from ._stages import numerical_rank as numerical_rank
from ._tune import TuneResult as TuneResult
from ._tune import tune as tune
from ._weak import MonteCarloEstimate as MonteCarloEstimate
from ._weak import WeakErrorTable as WeakErrorTable
from ._weak import monte_carlo as monte_carlo
from ._weak import sample_covariance as sample_covariance
from ._weak import weak_error_exponent as weak_error_exponent
from ._weak_orders import sgd_weak_exponent as sgd_weak_exponent
