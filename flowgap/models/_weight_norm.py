import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._laws import direction_norms_law


def _direction_norms(model: "WeightNorm") -> Float[Array, " out"]:
    return direction_norms_law([model.v])


class WeightNorm(eqx.Module):
    r"""Salimans–Kingma weight normalisation of an `eqx.nn.Linear`.

    Each output unit i has weight vector wᵢ = gᵢ·vᵢ/‖vᵢ‖, trained in (g, v). The
    wrapped layer's `weight` holds the rows vᵢ and is used only through vᵢ/‖vᵢ‖;
    its bias (if any) is trained as usual.

    Since L(g, a·v) = L(g, v) for every a > 0, ∇_v L ⊥ v, so the gradient flow
    conserves every ‖vᵢ‖², while a gradient step increases it exactly:
    ‖vᵢ‖² ← ‖vᵢ‖² + η²‖∇_{vᵢ}L‖².

    **Arguments:**

    - `layer`: the `eqx.nn.Linear` to normalise (2-D weight).
    - `gain`: initial g, shape (out,). Default: the row norms of the layer's weight,
      so the wrapped layer computes the same function at initialisation.
    """

    layer: eqx.nn.Linear
    gain: Float[Array, " out"]

    def __init__(self, layer: eqx.nn.Linear, *, gain=None):
        if not isinstance(layer, eqx.nn.Linear):
            raise TypeError(
                f"`layer` must be an eqx.nn.Linear, got {type(layer).__name__}."
            )
        if layer.weight.ndim != 2:
            raise ValueError(
                "`layer` must have a 2-D weight (in_features/out_features not "
                f"'scalar'); got weight shape {layer.weight.shape}."
            )
        norms = jnp.linalg.norm(layer.weight, axis=1)
        if gain is None:
            gain = norms
        gain = jnp.asarray(gain, dtype=layer.weight.dtype)
        if gain.shape != norms.shape:
            raise ValueError(
                f"`gain` must have shape {norms.shape} (one per output unit), "
                f"got {gain.shape}."
            )
        self.layer = layer
        self.gain = gain

    @property
    def v(self) -> Float[Array, "out in"]:
        """The unnormalised directions vᵢ (rows)."""
        return self.layer.weight

    def weight(self) -> Float[Array, "out in"]:
        """The effective weight matrix, rows gᵢ vᵢ/‖vᵢ‖."""
        v = self.layer.weight
        return self.gain[:, None] * v / jnp.linalg.norm(v, axis=1, keepdims=True)

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        effective = eqx.tree_at(lambda lin: lin.weight, self.layer, self.weight())
        return effective(x)

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`weight_norm_directions`: ‖vᵢ‖² per unit. (Model protocol,
        `flowgap.models.PROTOCOL`.)"""
        del inputs, ratio
        return {"weight_norm_directions": _direction_norms}
