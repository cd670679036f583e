import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_scalar
from ._implicit_bias import woodworth_limit


def woodworth_limit_derivative(
    inputs: Float[Array, "n d"], targets: Float[Array, " n"], scale
) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    r"""The converged gradient-flow limit β_∞(α) of a depth-2 `DiagonalNet` from
    u = v = α·1 and its derivative dβ_∞/dα, by the implicit function theorem —
    no trajectory is unrolled.

    The limit is β_∞ = 2α² sinh(Xᵀν) where ν solves the dual optimality condition
    (docs: theory/implicit-bias)

    $$F(\nu, \alpha) = X\,2\alpha^2\sinh(X^\top\nu) - y = 0 .$$

    Differentiating F(ν(α), α) = 0 gives

    $$\frac{d\nu}{d\alpha} = -J^{-1}\,\partial_\alpha F,\quad
    J = X\,\mathrm{diag}(2\alpha^2\cosh(X^\top\nu))\,X^\top,\quad
    \partial_\alpha F = \tfrac{2}{\alpha} X\beta_\infty,$$

    $$\frac{d\beta_\infty}{d\alpha} = \frac{2}{\alpha}\beta_\infty
      + \mathrm{diag}(2\alpha^2\cosh(X^\top\nu))\,X^\top\frac{d\nu}{d\alpha}.$$

    This is exactly what `optimistix.ImplicitAdjoint` (the default adjoint of the
    Newton root find in `woodworth_limit`) computes when `woodworth_limit` is
    differentiated: one n×n linear solve (lineax) per direction, independent of
    how long the flow would take to converge. The derivative is taken in forward
    mode (`jax.jvp`: one input α, d outputs). J is invertible when X has full row
    rank, so the limit is an isolated solution in ν even though the interpolating
    set in β is not (which is why implicit differentiation of the flow's own steady
    state, `diffrax.ImplicitAdjoint`, cannot be used here).

    **Arguments:** `inputs` X (n × d), `targets` y (n,), `scale` α > 0.

    **Returns:** (β_∞, dβ_∞/dα), each of shape (d,).
    """
    # checked here, then traced: under filter_jit a Python float would be
    # static, one compiled program per α
    return _limit_and_derivative(inputs, targets, positive_scalar("scale", scale))


@eqx.filter_jit
def _limit_and_derivative(inputs, targets, scale):
    return jax.jvp(
        lambda a: woodworth_limit(inputs, targets, a),
        (scale,),
        (jnp.ones_like(scale),),
    )
