import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from .._checks import is_concrete, positive_scalar
from .._precision import attainable_tolerances


def _scale_squared(scale, dim: int):
    """α² from a positive scalar α, or (α_i²)_i from a positive vector of shape
    (dim,): checked now when concrete, by `eqx.error_if` when traced."""
    if jnp.ndim(scale) == 0:
        return positive_scalar("scale", scale) ** 2
    arr = jnp.asarray(scale)
    if arr.shape != (dim,) or not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(
            f"`scale` must be a positive scalar or a float vector of shape "
            f"({dim},), got dtype {arr.dtype} and shape {arr.shape}."
        )
    bad = ~jnp.all(jnp.isfinite(arr) & (arr > 0))
    if is_concrete(arr):
        if bool(bad):
            raise ValueError("every entry of `scale` must be positive and finite.")
        return arr**2
    arr = eqx.error_if(arr, bad, "every entry of `scale` must be positive and finite.")
    return arr**2


def woodworth_potential(beta: Float[Array, " d"], scale: ArrayLike) -> Float[Array, ""]:
    r"""The Woodworth potential, with one scale or one scale per coordinate:

    $$Q_\alpha(\beta) = \sum_i \alpha_i^2\, q(\beta_i/\alpha_i^2),\qquad
      q(z) = 2 - \sqrt{4 + z^2} + z\,\operatorname{arcsinh}(z/2)$$

    (Woodworth et al. 2020), whose constrained minimiser is the gradient-flow
    limit of a depth-2 `DiagonalNet` from u = v = α (docs: theory/implicit-bias).
    ∂Q/∂βᵢ = arcsinh(βᵢ/2αᵢ²).

    **Arguments:** `beta` β (d,); `scale` α > 0, a scalar (αᵢ = α) or a vector
    of shape (d,).

    **Returns:** Q_α(β), a scalar.
    """
    a2 = _scale_squared(scale, jnp.shape(beta)[-1])
    z = beta / a2
    q = 2 - jnp.sqrt(4 + z**2) + z * jnp.arcsinh(z / 2)
    # a scalar α² factors out of the sum (kept that way: scalar results unchanged)
    return a2 * jnp.sum(q) if a2.ndim == 0 else jnp.sum(a2 * q)


def woodworth_limit(
    inputs: Float[Array, "n d"],
    targets: Float[Array, " n"],
    scale: ArrayLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 1000,
    throw: bool = True,
) -> Float[Array, " d"]:
    r"""argmin Q_α(β) subject to Xβ = y, via the convex dual.

    Gradient flow of a depth-2 diagonal network from u = v = α·1 has
    β(t) = 2α² sinh(Xᵀν(t)) for some ν(t) ∈ ℝⁿ (the mirror structure of §5), so an
    interpolating limit is β_∞ = 2α² sinh(Xᵀν*) with ν* the minimiser of

    $$\Phi(\nu) = \sum_i 2\alpha_i^2\cosh((X^\top\nu)_i) - \nu^\top y,$$

    whose gradient X·2α² sinh(Xᵀν) − y vanishes exactly when Xβ = y. Φ is solved
    by Newton's method (optimistix) on ∇Φ, whose Jacobian is the n×n matrix
    X diag(2α² cosh(Xᵀν)) Xᵀ of the dual (small; no training Hessian is formed).

    The same holds coordinate by coordinate with a vector scale: from
    u₀ = v₀ = α (per coordinate) the flow keeps βᵢ = 2αᵢ² sinh((Xᵀν)ᵢ), and the
    limit minimises Q_α(β) = Σᵢ αᵢ² q(βᵢ/αᵢ²). This is the form that describes
    SGD and other perturbed runs, whose effective scale differs per coordinate:
    (α_eff)ᵢ² = uᵢvᵢ at the end of the run (docs: theory/sgd).

    **Arguments:** `inputs` X (n × d, n < d for a non-trivial bias), `targets` y,
    `scale` α > 0, a scalar or a vector of shape (d,) (traceable either way);
    the Newton tolerances (default 1e-13 in float64, 100·ε in a coarser dtype:
    `flowgap._precision.attainable_tolerances`). `throw=False` returns NaN where
    the Newton solve fails or β is not finite (e.g. α so small that sinh
    overflows before Xβ reaches y) instead of raising: an error raised inside a
    compiled solve is printed as a traceback even where the caller catches it.

    **Returns:** β_∞, shape (d,).
    """
    x = jnp.asarray(inputs)
    y = jnp.asarray(targets)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"`inputs` must be (n, d) and `targets` (n,), got {x.shape} and {y.shape}."
        )
    a2 = _scale_squared(scale, x.shape[1])

    def beta(nu):
        return 2 * a2 * jnp.sinh(x.T @ nu)

    def dual_objective(nu, _):
        return jnp.sum(2 * a2 * jnp.cosh(x.T @ nu)) - nu @ y

    # BFGS (with line search) is robust from ν = 0 where cosh is steep; a Newton
    # polish on ∇Φ then takes the constraint residual to round-off.
    nu0 = jnp.zeros(x.shape[0], x.dtype)
    bfgs = optx.BFGS(*attainable_tolerances(1e-10, 1e-10, x.dtype))
    nu = optx.minimise(
        dual_objective, bfgs, nu0, max_steps=max_steps, throw=throw
    ).value
    default = attainable_tolerances(1e-13, 1e-13, x.dtype)
    rtol = default[0] if rtol is None else rtol
    atol = default[1] if atol is None else atol
    solution = optx.root_find(
        lambda nu, _: x @ beta(nu) - y,
        optx.Newton(rtol=rtol, atol=atol),
        nu,
        max_steps=max_steps,
        throw=throw,
    )
    limit = beta(solution.value)
    if throw:
        return limit
    solved = (solution.result == optx.RESULTS.successful) & jnp.all(jnp.isfinite(limit))
    return jnp.where(solved, limit, jnp.nan)
