"""The model protocol for `eqx.nn.MLP`, which flowgap cannot give methods."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._laws import rescaling_law


def _positively_homogeneous(sigma) -> bool:
    r"""σ(a z) = a σ(z) for a ∈ {½, 2, 3} on a grid of z ∈ [−3, 3], to 1e-6
    relative: true of relu, leaky relu and the identity, false by O(1) for tanh,
    gelu, softplus, sigmoid. (A check on a grid, not a proof.)"""
    with jax.ensure_compile_time_eval():
        z = jnp.linspace(-3.0, 3.0, 25)
        return all(
            bool(jnp.allclose(sigma(a * z), a * sigma(z), rtol=1e-6, atol=1e-12))
            for a in (0.5, 2.0, 3.0)
        )


def _layers(mlp: eqx.nn.MLP) -> list:
    """The linear layers in order (a scanned MLP's stacked hidden layers split)."""
    if not mlp.scan or mlp.depth < 2:
        return list(mlp.layers)
    first, hidden, last = mlp.layers
    unstack = [jax.tree.map(lambda x, i=i: x[i], hidden) for i in range(mlp.depth - 1)]
    return [first, *unstack, last]


def _incoming_sq(layer: eqx.nn.Linear) -> Float[Array, " units"]:
    incoming = jnp.sum(layer.weight**2, axis=1)
    return incoming if layer.bias is None else incoming + layer.bias**2


def eqx_mlp_unit_rescaling(mlp: eqx.nn.MLP) -> Float[Array, " units"]:
    r"""Per hidden unit, ‖incoming weights and bias‖² − ‖outgoing weights‖²."""
    layers = _layers(mlp)
    return rescaling_law(
        [(_incoming_sq(a), b.weight) for a, b in zip(layers[:-1], layers[1:])]
    )


def _known_invariants(mlp, inputs=None, ratio=1.0) -> dict:
    """The per-unit rescaling laws, when the hidden activation carries no
    parameters and is positively homogeneous (then the loss is invariant to
    (incoming, outgoing) ↦ (a·incoming, outgoing/a), a > 0)."""
    del inputs, ratio
    learnt = jax.tree.leaves(eqx.filter(mlp.activation, eqx.is_array))
    if mlp.depth == 0 or learnt or not _positively_homogeneous(mlp.activation):
        return {}
    return {"unit_rescaling": eqx_mlp_unit_rescaling}


def _layer_blocks(mlp) -> tuple:
    """Each entry of `layers` (with `scan=True` the stacked hidden layers are one
    block), then the activations if they carry trainable arrays."""
    blocks = [lambda m, i=i: m.layers[i] for i in range(len(mlp.layers))]
    for name in ("activation", "final_activation"):
        if jax.tree.leaves(eqx.filter(getattr(mlp, name), eqx.is_inexact_array)):
            blocks.append(lambda m, name=name: getattr(m, name))
    return tuple(blocks)


EQX_MLP_METHODS = {
    "known_invariants": _known_invariants,
    "layer_blocks": _layer_blocks,
}
