"""Analysis: implicit-bias limits, gap exponents, curvature, fits."""

from ._fit import loglog_slope as loglog_slope
from ._gap import (
    GapTable as GapTable,
    gap_exponent as gap_exponent,
    parameter_distance as parameter_distance,
)
from ._implicit_bias import (
    woodworth_limit as woodworth_limit,
    woodworth_potential as woodworth_potential,
)
from ._curvature import (
    lanczos as lanczos,
    predictor_hessian_norm as predictor_hessian_norm,
    sharpness as sharpness,
    track_sharpness as track_sharpness,
)
