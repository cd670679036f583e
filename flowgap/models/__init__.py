"""Equinox models (docs: theory/models). Every model documents what `scale` means.

What flowgap knows about a model it learns through optional methods on the model's
class — the model protocol, documented in `flowgap.models._protocol` (`PROTOCOL`
lists the names; `model_method` finds them), so a user's own model gets the same
features by defining the same methods.
"""

from ._activations import (
    ACTIVATIONS as ACTIVATIONS,
)
from ._activations import (
    POSITIVELY_HOMOGENEOUS as POSITIVELY_HOMOGENEOUS,
)
from ._activations import (
    SMOOTH as SMOOTH,
)
from ._deep_linear import DeepLinear as DeepLinear
from ._diagonal import DiagonalNet as DiagonalNet
from ._mlp import MLP as MLP
from ._polar import PolarDiagonalNet as PolarDiagonalNet
from ._protocol import (
    PROTOCOL as PROTOCOL,
)
from ._protocol import (
    model_method as model_method,
)
from ._protocol import (
    non_smooth as non_smooth,
)
from ._two_layer import TwoLayer as TwoLayer
from ._weight_norm import WeightNorm as WeightNorm
