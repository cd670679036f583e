"""Continuous-time counterparts of heavy-ball gradient descent."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._checks import positive_scalar
from ._field import AbstractField
from ._flow import gradient_flow
from ._modified import _check_order


def _check_beta(beta):
    beta = positive_scalar("beta", beta)
    if jnp.ndim(beta) == 0 and not isinstance(beta, jax.core.Tracer):
        if not float(beta) < 1:
            raise ValueError(f"`beta` must lie in (0, 1), got {float(beta)}.")
    return beta


class MomentumField(AbstractField):
    r"""Heavy ball's flow on the clock t = k·η, to order 0 or 1 in η.

    Heavy ball as optax writes it (`optax.sgd(η, momentum=β)`; pass
    `optimizer=functools.partial(optax.sgd, momentum=β)` to `gradient_descent`):
    m_{k+1} = βm_k + P∇L(θ_k), θ_{k+1} = θ_k − ηm_{k+1}, m₀ = 0. With
    f = −P∇L:

    - order 0: dθ/dt = f/(1 − β) from θ₀, the η → 0 limit; GD is O(η) from it.
    - order 1: the modified equation on the slow manifold m ≈ M(θ) (Kovachki &
      Stuart 2021), dθ/dt = f/(1 − β) − η(1 + β)/(2(1 − β)³)·f'f, i.e.
      −P∇L/(1 − β) − η(1 + β)/(2(1 − β)³)·PHP∇L, started (`start`) from
      θ₀ + ηβP∇L(θ₀)/(1 − β)², which accounts for m₀ = 0 being off that manifold
      (the transient m_k − M(θ_k) ∝ βᵏ shifts θ by this much); GD is O(η²) from
      it. With M = M₀ + ηM₁, (1 − β)M + M'δ = P∇L gives M₀ = P∇L/(1 − β),
      M₁ = PHP∇L/(1 − β)³, so the step is θ − ηP∇L/(1 − β) −
      η²βPHP∇L/(1 − β)³ + O(η³), whose modified field is the one above.

    The second-order (inertial) ODE is not used: on this clock, with β fixed, it
    relaxes to the same first-order dynamics.

    **Fields:** `lr` (η), `beta` (β ∈ (0, 1)), both traced; `order` (0 or 1,
    static); `rates` (P).
    """

    lr: Float[Array, ""]
    beta: Float[Array, ""]
    order: int = eqx.field(static=True)
    rates: PyTree | None = None

    def __init__(self, lr, beta, order: int = 1, rates=None):
        self.lr = positive_scalar("lr", lr)
        self.beta = _check_beta(beta)
        self.order = _check_order(order, (0, 1))
        self.rates = rates

    @property
    def grad_evals_per_call(self) -> int:
        return 1 if self.order == 0 else 2

    def __call__(self, t, y, objective):
        def f(p):
            return -objective.precondition(objective.grad(p))

        fx = f(y)
        leading = fx / (1 - self.beta)
        if self.order == 0:
            return leading
        jf = jax.jvp(f, (y,), (fx,))[1]  # f'f = PHP∇L
        correction = self.lr * (1 + self.beta) / (2 * (1 - self.beta) ** 3)
        return leading - correction * jf

    def start(self, y0, objective):
        if self.order == 0:
            return y0
        shift = self.lr * self.beta / (1 - self.beta) ** 2
        return y0 + shift * objective.precondition(objective.grad(y0))


def momentum_flow(loss, model, *, lr, beta, order: int = 1, rates=None, **kwargs):
    """`gradient_flow(loss, model, field=MomentumField(lr, beta, order, rates),
    ...)`: heavy ball's flow (see `MomentumField`); every other keyword is
    `gradient_flow`'s."""
    return gradient_flow(
        loss, model, field=MomentumField(lr, beta, order, rates), **kwargs
    )
