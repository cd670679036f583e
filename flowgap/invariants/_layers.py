from jaxtyping import Array, Float

from ..models import model_method
from ..models._protocol import class_path


def _declared(model, name: str, flowgap_models: str, inputs=None, ratio=1.0):
    """The law `name` from `model.known_invariants(inputs, ratio)`, evaluated at
    `model`; `flowgap_models` says which models declare it, for the error."""
    if isinstance(model, type):
        raise ValueError(
            f"`{name}`: its argument `model` must be a model instance, got the class "
            f"{model.__module__}.{model.__qualname__} itself; build one first."
        )
    declared = model_method(model, "known_invariants")
    laws = {} if declared is None else declared(inputs, ratio)
    if name not in laws:
        has = ", ".join(laws) or "none"
        raise ValueError(
            f"`{name}`: its argument `model` must conserve this law, i.e. its "
            f"`known_invariants()` must declare {name!r} (in flowgap: "
            f"{flowgap_models}); got {_described(model)}, which declares {has}."
        )
    return laws[name](model)


def _described(model) -> str:
    """The model's class, and its activation when it has one (the usual reason a
    network declares no rescaling law)."""
    activation = getattr(model, "activation", None)
    if activation is None:
        return class_path(model)
    label = activation if isinstance(activation, str) else _function_name(activation)
    return f"{class_path(model)}(activation={label})"


def _function_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


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
        "a TwoLayer, an MLP without weight norm or an eqx.nn.MLP whose hidden "
        "activation is positively homogeneous, σ(a·z) = a·σ(z) for a > 0 (linear, "
        "relu, leaky_relu; not tanh, gelu or softplus), with no trainable "
        "parameters of its own",
    )
