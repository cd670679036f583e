from jaxtyping import Array, Float

from ._layers import _declared


def diagonal_balance(model) -> Float[Array, " dim"]:
    r"""Entrywise law of a diagonal network (any data):

    - depth 2: Q = u ⊙ v (since du/dt = −2u⊙g, dv/dt = +2v⊙g);
    - depth L ≥ 3: Q = u^{2−L} + v^{2−L}.

    Evaluates the law of this name that the model declares (`known_invariants`;
    flowgap's `DiagonalNet` does).
    """
    return _declared(model, "diagonal_balance", "a DiagonalNet")


def diagonal_mirror(model, inputs: Float[Array, "n dim"]) -> Float[Array, " 2*dim"]:
    r"""Data-dependent ("mirror") law of a diagonal network on inputs X.

    The gradient in β is g = Xᵀ(residual)/n ∈ range(Xᵀ), and d(ln u)/dt = −2g,
    d(ln v)/dt = +2g at depth 2 (d(u^{2−L})/dt = −(2−L)L·g at depth L ≥ 3). So with
    P = I − X⁺X the projector onto null(X),

    - depth 2: Q = (P ln u, P ln v);
    - depth L ≥ 3: Q = (P u^{2−L}, P v^{2−L}).

    Needs u, v > 0 (true along the flow from u = v = α·1). Evaluates the law the
    model declares (`known_invariants(inputs)`).
    """
    return _declared(model, "diagonal_mirror", "a DiagonalNet", inputs=inputs)
