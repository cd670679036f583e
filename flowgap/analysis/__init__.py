"""Analysis: implicit-bias limits and fits."""

from ._fit import loglog_slope as loglog_slope
from ._implicit_bias import (
    woodworth_limit as woodworth_limit,
    woodworth_potential as woodworth_potential,
)
