"""Type aliases shared across flowgap (as in diffrax's `_custom_types.py`)."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = Real[ArrayLike, ""]
BoolScalar: TypeAlias = Bool[Array, ""]
IntScalar: TypeAlias = Int[Array, ""]
Vector: TypeAlias = Float[Array, " dim"]
Inputs: TypeAlias = Float[Array, "n ..."]
Targets: TypeAlias = Float[Array, "n ..."]
Params: TypeAlias = PyTree[Array]
