import jax.numpy as jnp
from jaxtyping import Array, Float

from ..models import DiagonalNet
from ._projection import null_projector


def _require(model, cls, name):
    if not isinstance(model, cls):
        raise ValueError(
            f"`model` must be a {cls.__name__} for `{name}`, "
            f"got {type(model).__name__}."
        )


def diagonal_balance(model) -> Float[Array, " dim"]:
    r"""Entrywise law of a `DiagonalNet` (any data):

    - depth 2: Q = u ⊙ v (since du/dt = −2u⊙g, dv/dt = +2v⊙g);
    - depth L ≥ 3: Q = u^{2−L} + v^{2−L}.
    """
    _require(model, DiagonalNet, "diagonal_balance")
    if model.depth == 2:
        return model.u * model.v
    return model.u ** (2 - model.depth) + model.v ** (2 - model.depth)


def diagonal_mirror(model, inputs: Float[Array, "n dim"]) -> Float[Array, " 2*dim"]:
    r"""Data-dependent ("mirror") law of a `DiagonalNet` on inputs X.

    The gradient in β is g = Xᵀ(residual)/n ∈ range(Xᵀ), and d(ln u)/dt = −2g,
    d(ln v)/dt = +2g at depth 2 (d(u^{2−L})/dt = −(2−L)L·g at depth L ≥ 3). So with
    P = I − X⁺X the projector onto null(X),

    - depth 2: Q = (P ln u, P ln v);
    - depth L ≥ 3: Q = (P u^{2−L}, P v^{2−L}).

    Needs u, v > 0 (true along the flow from u = v = α·1).
    """
    _require(model, DiagonalNet, "diagonal_mirror")
    projector = null_projector(jnp.asarray(inputs))
    if model.depth == 2:
        mirror_u, mirror_v = jnp.log(model.u), jnp.log(model.v)
    else:
        mirror_u, mirror_v = model.u ** (2 - model.depth), model.v ** (2 - model.depth)
    return jnp.concatenate([projector @ mirror_u, projector @ mirror_v])
