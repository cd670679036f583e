import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float

from .._checks import positive_scalar


def woodworth_potential(beta: Float[Array, " d"], scale) -> Float[Array, ""]:
    r"""Q_α(β) = α² Σᵢ q(βᵢ/α²), q(z) = 2 − √(4 + z²) + z·arcsinh(z/2)
    (Woodworth et al. 2020), the potential whose constrained minimiser is the
    gradient-flow limit of a depth-2 `DiagonalNet` from u = v = α·1."""
    a2 = positive_scalar("scale", scale) ** 2
    z = beta / a2
    return a2 * jnp.sum(2 - jnp.sqrt(4 + z**2) + z * jnp.arcsinh(z / 2))


def woodworth_limit(
    inputs: Float[Array, "n d"],
    targets: Float[Array, " n"],
    scale,
    *,
    rtol: float = 1e-13,
    atol: float = 1e-13,
    max_steps: int = 1000,
) -> Float[Array, " d"]:
    r"""argmin Q_α(β) subject to Xβ = y, via the convex dual.

    Gradient flow of a depth-2 diagonal network from u = v = α·1 has
    β(t) = 2α² sinh(Xᵀν(t)) for some ν(t) ∈ ℝⁿ (the mirror structure of §5), so an
    interpolating limit is β_∞ = 2α² sinh(Xᵀν*) with ν* the minimiser of

    $$\Phi(\nu) = \sum_i 2\alpha^2\cosh((X^\top\nu)_i) - \nu^\top y,$$

    whose gradient X·2α² sinh(Xᵀν) − y vanishes exactly when Xβ = y. Φ is solved
    by Newton's method (optimistix) on ∇Φ, whose Jacobian is the n×n matrix
    X diag(2α² cosh(Xᵀν)) Xᵀ of the dual (small; no training Hessian is formed).

    **Arguments:** `inputs` X (n × d, n < d for a non-trivial bias), `targets` y,
    `scale` α > 0; solver tolerances.

    **Returns:** β_∞, shape (d,).
    """
    x = jnp.asarray(inputs)
    y = jnp.asarray(targets)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"`inputs` must be (n, d) and `targets` (n,), got {x.shape} and {y.shape}."
        )
    a2 = positive_scalar("scale", scale) ** 2

    def beta(nu):
        return 2 * a2 * jnp.sinh(x.T @ nu)

    def dual_objective(nu, _):
        return jnp.sum(2 * a2 * jnp.cosh(x.T @ nu)) - nu @ y

    # BFGS (with line search) is robust from ν = 0 where cosh is steep; a Newton
    # polish on ∇Φ then takes the constraint residual to round-off.
    nu0 = jnp.zeros(x.shape[0], x.dtype)
    nu = optx.minimise(
        dual_objective, optx.BFGS(rtol=1e-10, atol=1e-10), nu0, max_steps=max_steps
    ).value
    nu = optx.root_find(
        lambda nu, _: x @ beta(nu) - y,
        optx.Newton(rtol=rtol, atol=atol),
        nu,
        max_steps=max_steps,
    ).value
    return beta(nu)
