from jaxtyping import Array, Float

from ..models import model_method
from ..models._protocol import class_path


def _declared(model, name: str, flowgap_models: str, inputs=None, ratio=1.0):
    """The law `name` from `model.known_invariants(inputs, ratio)`, evaluated at
    `model`."""
    declared = model_method(model, "known_invariants")
    laws = {} if declared is None else declared(inputs, ratio)
    if name not in laws:
        has = ", ".join(laws) or "none"
        raise ValueError(
            f"`{name}` needs a model whose `known_invariants()` declares {name!r} "
            f"(in flowgap: {flowgap_models}); got {class_path(model)}, which "
            f"declares {has}."
        )
    return laws[name](model)


def weight_norm_directions(model) -> Float[Array, " units"]:
    r"""‖vᵢ‖² of every weight-normalised unit (rows gᵢvᵢ/‖vᵢ‖), concatenated over
    layers for an `MLP(weight_norm=True)`. Conserved by the flow since ∇_vL ⊥ v;
    each plain gradient step adds η²‖∇_{vᵢ}L‖² exactly.

    Evaluates the law of this name that the model declares (`known_invariants`).
    """
    return _declared(
        model,
        "weight_norm_directions",
        "a WeightNorm, an MLP built with weight_norm=True",
    )


def balancedness(model) -> Float[Array, " entries"]:
    r"""The balancedness matrices W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (j = 1…N−1) of a
    `DeepLinear` (or of a linear `TwoLayer`: W₂ᵀW₂ − W₁W₁ᵀ), flattened and
    concatenated (hᵢ² entries for hidden size hᵢ). Conserved since
    L(W_{j+1}A⁻¹, AW_j) = L for every invertible A.

    Evaluates the law of this name that the model declares (`known_invariants`).
    """
    return _declared(
        model,
        "balancedness",
        "a DeepLinear with at least two layers, a linear TwoLayer",
    )


def unit_rescaling(model) -> Float[Array, " units"]:
    r"""Per hidden unit, ‖incoming‖² − ‖outgoing‖² (incoming includes the bias).

    For positively homogeneous σ (linear, ReLU, leaky ReLU) the loss is invariant to
    (incoming, outgoing) ↦ (a·incoming, outgoing/a), a > 0, which conserves this
    difference. `TwoLayer`: ‖W₁[i]‖² − ‖W₂[:, i]‖²; `MLP` (without weight norm) and
    `eqx.nn.MLP` (hidden activation checked to be positively homogeneous): every
    hidden unit of every hidden layer. None is claimed for tanh and other
    non-homogeneous activations.

    Evaluates the law of this name that the model declares (`known_invariants`).
    """
    return _declared(
        model,
        "unit_rescaling",
        "a TwoLayer or an MLP without weight norm, or an eqx.nn.MLP, with a "
        "positively homogeneous activation (linear, relu, leaky_relu)",
    )
