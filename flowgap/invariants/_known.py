import functools

from .._checks import positive_scalar
from ..models import (
    MLP,
    POSITIVELY_HOMOGENEOUS,
    DeepLinear,
    DiagonalNet,
    PolarDiagonalNet,
    TwoLayer,
    WeightNorm,
)
from ._diagonal import diagonal_balance, diagonal_mirror
from ._layers import balancedness, unit_rescaling, weight_norm_directions
from ._polar import polar_direction_norm, polar_mirror


def known(model, problem=None, *, ratio=1.0) -> dict:
    """The library's conservation laws that apply to `model`, by name.

    Each value is a function model → array. Data-dependent (mirror) laws appear only
    when `problem` (anything with `.inputs`) is given; the polar mirror law uses the
    rate ratio `ratio` = ρ the model is trained at. An empty dict means none is
    claimed (e.g. a tanh `TwoLayer`).
    """
    ratio = positive_scalar("ratio", ratio)
    laws = {}
    inputs = None if problem is None else problem.inputs
    if isinstance(model, DiagonalNet):
        laws["diagonal_balance"] = diagonal_balance
        if inputs is not None:
            laws["diagonal_mirror"] = functools.partial(diagonal_mirror, inputs=inputs)
    elif isinstance(model, PolarDiagonalNet):
        laws["polar_direction_norm"] = polar_direction_norm
        if inputs is not None and not model.split:
            laws["polar_mirror"] = functools.partial(
                polar_mirror, inputs=inputs, ratio=ratio
            )
    elif isinstance(model, WeightNorm):
        laws["weight_norm_directions"] = weight_norm_directions
    elif isinstance(model, DeepLinear):
        if len(model.weights) >= 2:
            laws["balancedness"] = balancedness
    elif isinstance(model, TwoLayer):
        if model.activation in POSITIVELY_HOMOGENEOUS:
            laws["unit_rescaling"] = unit_rescaling
        if model.activation == "linear":  # rescaling is its diagonal part
            laws["balancedness"] = balancedness
    elif isinstance(model, MLP):
        if all(isinstance(layer, WeightNorm) for layer in model.layers):
            laws["weight_norm_directions"] = weight_norm_directions
        elif model.activation in POSITIVELY_HOMOGENEOUS:
            laws["unit_rescaling"] = unit_rescaling
    else:
        raise ValueError(
            f"`model` of type {type(model).__name__} is not a flowgap model; write its "
            "invariants directly or derive them with `flowgap.invariants` symmetries."
        )
    return laws
