"""Conserved quantities of gradient flows and their drift under gradient descent
(science.md §4)."""

from ._check import (
    ConservationCheck as ConservationCheck,
    check_conserved as check_conserved,
    relative_drift as relative_drift,
)
from ._count import (
    LawCount as LawCount,
    count_conservation_laws as count_conservation_laws,
    default_reparametrisation as default_reparametrisation,
)
from ._diagonal import (
    diagonal_balance as diagonal_balance,
    diagonal_mirror as diagonal_mirror,
)
from ._drift import (
    DriftReport as DriftReport,
    gd_drift as gd_drift,
    symmetry_step_identity as symmetry_step_identity,
)
from ._known import known as known
from ._layers import (
    balancedness as balancedness,
    unit_rescaling as unit_rescaling,
    weight_norm_directions as weight_norm_directions,
)
from ._polar import polar_direction_norm as polar_direction_norm, polar_mirror as polar_mirror
from ._projection import null_projector as null_projector
from ._symmetry import (
    AbstractSymmetry as AbstractSymmetry,
    LinearSymmetry as LinearSymmetry,
    RescaleSymmetry as RescaleSymmetry,
    ScaleSymmetry as ScaleSymmetry,
    TranslationSymmetry as TranslationSymmetry,
)
