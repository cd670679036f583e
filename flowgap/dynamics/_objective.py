"""The training loss as a function of the flat trainable vector θ ∈ ℝᴰ: what a
flow's vector field sees."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._flat import FlatLayout


class Objective(eqx.Module):
    r"""L(θ) on the flat trainable vector, with its derivatives and the rates P.

    A field (`AbstractField`) receives one of these and computes dθ/dt from it.
    θ is the trainable leaves raveled in tree order (`layout`); the model is
    `combine(layout.unravel(θ), static)`. Derivatives are Jacobian–vector
    products: `hvp` is ∇²L(θ)v as a jvp of the gradient, so no Hessian is formed.

    **Fields:** `loss` (model → scalar), `static` (the non-trainable rest of the
    model), `layout` (`FlatLayout` of the trainable leaves), `rates` (P as a flat
    vector, or None for P = I).
    """

    loss: Callable
    static: PyTree
    layout: FlatLayout
    rates: Float[Array, " D"] | None

    def model(self, y: Float[Array, " D"]) -> PyTree:
        """The model at θ = `y`."""
        return eqx.combine(self.layout.unravel(y), self.static)

    def __call__(self, y: Float[Array, " D"]) -> Float[Array, ""]:
        """L(θ)."""
        out = self.loss(self.model(y))
        if jnp.shape(out) != ():
            raise ValueError(
                f"`loss` must return a scalar, got shape {jnp.shape(out)}."
            )
        return out

    def grad(self, y: Float[Array, " D"]) -> Float[Array, " D"]:
        """∇L(θ)."""
        return jax.grad(self)(y)

    def value_and_grad(self, y):
        """(L(θ), ∇L(θ))."""
        return jax.value_and_grad(self)(y)

    def hvp(self, y: Float[Array, " D"], v: Float[Array, " D"]) -> Float[Array, " D"]:
        """∇²L(θ)v, a jvp of the gradient."""
        return jax.jvp(self.grad, (y,), (v,))[1]

    def precondition(self, v: Float[Array, " D"]) -> Float[Array, " D"]:
        """P ⊙ v (v itself when P = I)."""
        return v if self.rates is None else self.rates * v
