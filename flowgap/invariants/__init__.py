"""Conserved quantities of gradient flows and their drift under gradient descent
(docs: theory/invariants)."""

from ._check import (
    ConservationCheck as ConservationCheck,
)
from ._check import (
    check_conserved as check_conserved,
)
from ._check import (
    relative_drift as relative_drift,
)
from ._count import (
    LawCount as LawCount,
)
from ._count import (
    count_conservation_laws as count_conservation_laws,
)
from ._count import (
    default_reparametrisation as default_reparametrisation,
)
from ._diagonal import (
    diagonal_balance as diagonal_balance,
)
from ._diagonal import (
    diagonal_mirror as diagonal_mirror,
)
from ._drift import (
    DriftReport as DriftReport,
)
from ._drift import (
    gd_drift as gd_drift,
)
from ._drift import (
    symmetry_step_identity as symmetry_step_identity,
)
from ._known import known as known
from ._layers import (
    balancedness as balancedness,
)
from ._layers import (
    unit_rescaling as unit_rescaling,
)
from ._layers import (
    weight_norm_directions as weight_norm_directions,
)
from ._plot import (
    drift_curves as drift_curves,
)
from ._plot import (
    flow_drift as flow_drift,
)
from ._plot import (
    plot_drift as plot_drift,
)
from ._polar import (
    polar_direction_norm as polar_direction_norm,
)
from ._polar import (
    polar_mirror as polar_mirror,
)
from ._projection import null_projector as null_projector
from ._symmetry import (
    AbstractSymmetry as AbstractSymmetry,
)
from ._symmetry import (
    LinearSymmetry as LinearSymmetry,
)
from ._symmetry import (
    RescaleSymmetry as RescaleSymmetry,
)
from ._symmetry import (
    ScaleSymmetry as ScaleSymmetry,
)
from ._symmetry import (
    TranslationSymmetry as TranslationSymmetry,
)
