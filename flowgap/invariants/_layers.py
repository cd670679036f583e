import jax.numpy as jnp
from jaxtyping import Array, Float

from ..models import MLP, POSITIVELY_HOMOGENEOUS, DeepLinear, TwoLayer, WeightNorm


def weight_norm_directions(model) -> Float[Array, " units"]:
    r"""‖vᵢ‖² of every weight-normalised unit (rows gᵢvᵢ/‖vᵢ‖), concatenated over
    layers for an `MLP(weight_norm=True)`. Conserved by the flow since ∇_vL ⊥ v;
    each plain gradient step adds η²‖∇_{vᵢ}L‖² exactly.
    """
    if isinstance(model, WeightNorm):
        layers = (model,)
    elif isinstance(model, MLP) and all(
        isinstance(la, WeightNorm) for la in model.layers
    ):
        layers = model.layers
    else:
        raise ValueError(
            "`model` must be a WeightNorm or an MLP built with weight_norm=True for "
            f"`weight_norm_directions`, got {type(model).__name__}."
        )
    return jnp.concatenate([jnp.sum(layer.v**2, axis=1) for layer in layers])


def balancedness(model) -> Float[Array, " entries"]:
    r"""The balancedness matrices W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (j = 1…N−1) of a
    `DeepLinear` (or of a linear `TwoLayer`: W₂ᵀW₂ − W₁W₁ᵀ), flattened and
    concatenated (hᵢ² entries for hidden size hᵢ). Conserved since
    L(W_{j+1}A⁻¹, AW_j) = L for every invertible A.
    """
    if isinstance(model, TwoLayer) and model.activation == "linear":
        w = (model.w1, model.w2)
    elif isinstance(model, DeepLinear) and len(model.weights) >= 2:
        w = model.weights
    else:
        raise ValueError(
            "`model` must be a DeepLinear with at least two layers or a linear "
            f"TwoLayer for `balancedness`, got {type(model).__name__}."
        )
    return jnp.concatenate(
        [(w[j + 1].T @ w[j + 1] - w[j] @ w[j].T).ravel() for j in range(len(w) - 1)]
    )


def unit_rescaling(model) -> Float[Array, " units"]:
    r"""Per hidden unit, ‖incoming‖² − ‖outgoing‖² (incoming includes the bias).

    For positively homogeneous σ (linear, ReLU, leaky ReLU) the loss is invariant to
    (incoming, outgoing) ↦ (a·incoming, outgoing/a), a > 0, which conserves this
    difference. `TwoLayer`: ‖W₁[i]‖² − ‖W₂[:, i]‖²; `MLP` (without weight norm):
    every hidden unit of every hidden layer. None is claimed for tanh and other
    non-homogeneous activations.
    """
    if isinstance(model, TwoLayer) and model.activation in POSITIVELY_HOMOGENEOUS:
        return jnp.sum(model.w1**2, axis=1) - jnp.sum(model.w2**2, axis=0)
    if (
        isinstance(model, MLP)
        and model.activation in POSITIVELY_HOMOGENEOUS
        and not any(isinstance(la, WeightNorm) for la in model.layers)
    ):
        layers = model.layers
        return jnp.concatenate(
            [
                jnp.sum(a.weight**2, axis=1) + a.bias**2 - jnp.sum(b.weight**2, axis=0)
                for a, b in zip(layers[:-1], layers[1:])
            ]
        )
    raise ValueError(
        "`unit_rescaling` needs a TwoLayer or an MLP (without weight norm) with a "
        "positively homogeneous activation (linear, relu, leaky_relu); got "
        f"{type(model).__name__} with activation "
        f"{getattr(model, 'activation', None)!r}."
    )
