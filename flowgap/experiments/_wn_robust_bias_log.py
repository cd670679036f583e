r"""wn-robust-bias's flow state: the diagonal nets' weights in log coordinates.

From u = v = α·1 every weight of `DiagonalNet` and of `PolarDiagonalNet` (the
radius and each direction entry) stays positive along the gradient flow: each
coordinate's velocity vanishes with the coordinate (∂L/∂uᵢ ∝ uᵢ^{L−1}, and the
sphere's tangent projection keeps θᵢ = 0 invariant). So z = log w is a chart of
the whole trajectory, and the flow ẇ = −P∇_wL reads, with ∇_zL = w ⊙ ∇_wL,

$$\dot z = -P\,e^{-2z}\odot\nabla_z L(e^z).$$

Why this chart. The stiff part of the polar flow at small α and large ρ is the
exponential decay of the off-support coordinates, θ̇ᵢ ≈ −κᵢθᵢ with κᵢ ∝ ρ: a rate
an explicit solver must resolve for as long as it lasts. In z it is the drift
żᵢ ≈ −κᵢ, which is not stiff, and the conserved quantity of the depth-2 polar
flow (the projection onto null(X̃) of ln θ + (ρ/2)r²·1, docs: theory/invariants)
is linear in (z, e^{2z_r}): a Runge–Kutta step keeps its linear part to round-off.
It is the same ODE, so the same limit; only the solver's state changes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .. import dynamics


class LogCoordinates(eqx.Module):
    """A model whose array leaves are all positive, stored as their logs.

    `log_model` is the model with every array leaf w replaced by z = log w; the
    network is `model()` = the same module with the leaves exp(z). It is applied
    as the model is, so `problem.loss` accepts it unchanged.

    **Arguments:** `log_model`, as above; build one with `LogCoordinates.of`.
    """

    log_model: PyTree

    @classmethod
    def of(cls, model: PyTree) -> "LogCoordinates":
        """`model` (every array leaf > 0) in log coordinates."""
        return cls(jax.tree.map(jnp.log, model))

    def model(self) -> PyTree:
        """The network at w = exp(z)."""
        return jax.tree.map(jnp.exp, self.log_model)

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        return self.model()(x)

    def end_to_end(self) -> Float[Array, " dim"]:
        return self.model().end_to_end()


class LogCoordinateField(dynamics.AbstractField):
    r"""The gradient flow ẇ = −P∇_wL written in z = log w:
    ż = −P e^{−2z} ⊙ ∇_zL (the state is a `LogCoordinates`' flat vector).

    e^{−2z} is applied as e^{−z}·e^{−z}: ∇_zL = w ⊙ ∇_wL is as small as w, so
    each factor stays in range even where wᵢ is far below 1e-154 (e^{−2z}
    alone would overflow there).

    **Arguments:** `rates`: P, a `LogCoordinates` holding the model's rate
    pytree (not its log), or None.
    """

    rates: PyTree | None = None
    grad_evals_per_call = 1

    def __call__(self, t, y, objective):
        z = jnp.maximum(y, log_floor(y.dtype))
        inverse = jnp.exp(-z)
        return -(objective.precondition(objective.grad(z)) * inverse) * inverse


def log_floor(dtype):
    r"""ln w̃ for the floor w̃ = tiny^{1/4} (1.2e-77 in float64, 3.3e-10 in
    float32) at which `LogCoordinateField` evaluates the velocity of a weight
    below it.

    Why. A weight's velocity ż = −P (∂L/∂w)/w is a ratio of two numbers as
    small as w (∂L/∂w ∝ w^{L−1}, and ∇_zL = w ∂L/∂w ∝ w^L). Evaluated at the
    weight itself, ∇_zL underflows once w^L is below tiny (z < −354 at depth 2
    in float64) and e^{−z} overflows at z < −709, so a coordinate the polar
    flow drives down at a large ρ (measured: z = −354 at t = 13.9 on the split
    depth-2 net, α = 1e-3, ρ = 100, falling by ~250 per unit time) gets a
    velocity of 0 or NaN and every solver stalls there. Evaluated at w̃, both
    stay in range (w̃^L normal for L ≤ 4), and the error is below round-off:
    at depth 2 the ratio does not depend on w except through its O(w̃²)
    share of β and of ‖θ‖² (1e-154 relative); at depth L ≥ 3 the true velocity
    is O(w^{L−2}) and the one used is O(w̃^{L−2}), both ~1e-77 or less. The
    chart's state z is the exact one, so a weight that must regrow later does
    so from where the flow left it, not from the floor."""
    return 0.25 * jnp.log(jnp.finfo(dtype).tiny)
