"""Equinox models of science.md §3. Every model documents what `scale` means."""

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
from ._two_layer import TwoLayer as TwoLayer
from ._weight_norm import WeightNorm as WeightNorm
