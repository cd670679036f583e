"""The modified (backward-error) flows of gradient descent."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._checks import positive_scalar
from ._field import AbstractField
from ._flow import gradient_flow


def _check_order(order, allowed):
    if isinstance(order, bool) or order not in allowed:
        names = " or ".join(str(a) for a in allowed)
        raise ValueError(f"`order` must be {names}, got {order!r}.")
    return order


class ModifiedField(AbstractField):
    r"""The order-1 or order-2 modified equation of gradient descent with step η.

    GD is explicit Euler with step η on f(θ) = −P∇L(θ). Its modified equation
    (Hairer, Lubich & Wanner, *Geometric Numerical Integration*, §IX.1) is

    $$\tilde f = f - \frac{\eta}{2} f'f
      + \eta^2\Big(\frac{1}{12} f''(f, f) + \frac{1}{3} f'f'f\Big) + O(\eta^3).$$

    - order 1: f − (η/2)f'f; for P = I the gradient flow of
      L̃₁ = L + (η/4)‖∇L‖² (Barrett & Dherin 2021), and GD stays O(η²) from it;
    - order 2: adds the η² terms; for P = I,
      −g − (η/2)Hg − η²[(1/3)H²g + (1/12)∇³L[g, g]], and GD stays O(η³) from it.

    f'v is a Hessian–vector product (a jvp of the gradient) and f''(v, v) a jvp
    of a jvp, so no Hessian is formed (see the theory pages: "Modified flows").

    **Fields:** `lr` (η > 0, traced), `order` (1 or 2, static), `rates` (P).
    """

    lr: Float[Array, ""]
    order: int = eqx.field(static=True)
    rates: PyTree | None = None

    def __init__(self, lr, order: int = 1, rates=None):
        self.lr = positive_scalar("lr", lr)
        self.order = _check_order(order, (1, 2))
        self.rates = rates

    @property
    def grad_evals_per_call(self) -> int:
        return 2 if self.order == 1 else 4

    def __call__(self, t, y, objective):
        return _modified(y, objective, self.lr, None if self.order == 1 else 1.0)


def _modified(y, objective, lr, weight):
    """f − (η/2)f'f, plus `weight`·η²((1/12)f''(f, f) + (1/3)f'f'f) unless
    `weight` is None (order 1)."""

    def f(p):
        return -objective.precondition(objective.grad(p))

    fx = f(y)
    jf = jax.jvp(f, (y,), (fx,))[1]  # f'f
    out = fx - 0.5 * lr * jf
    if weight is not None:
        jjf = jax.jvp(f, (y,), (jf,))[1]  # f'f'f
        # f''(f, f), with the direction held at f(θ)
        second = jax.jvp(lambda p: jax.jvp(f, (p,), (fx,))[1], (y,), (fx,))[1]
        out = out + weight * lr**2 * (second / 12 + jjf / 3)
    return out


class SeriesField(AbstractField):
    r"""The gradient flow and the modified flows of orders 1 and 2 as one field,
    the order chosen by traced numbers, so that every order and every η share
    one compiled solve (`flowgap run gap` solves nine flows per model):

    $$F = f - \frac{\eta}{2} f'f + w\,\eta^2\Big(\frac{1}{12} f''(f, f)
      + \frac{1}{3} f'f'f\Big),\qquad f = -P\nabla L,$$

    with η = 0 for the gradient flow (F = f exactly: the other terms are
    multiplied by 0), w = 0 for order 1 and w = 1 for order 2: the values of
    `GradientField` and `ModifiedField`, at the cost of order 2 for each.

    **Fields:** `lr` (η ≥ 0, traced), `weight` (w, traced), `rates` (P).
    """

    lr: Float[Array, ""]
    weight: Float[Array, ""]
    rates: PyTree | None = None
    grad_evals_per_call = 4

    @classmethod
    def of_order(cls, order: int, lr=0.0, rates=None) -> "SeriesField":
        """The field of `order` (0: the gradient flow; 1, 2: modified flows)."""
        order = _check_order(order, (0, 1, 2))
        dtype = jnp.result_type(float)
        lr = positive_scalar("lr", lr) if order else jnp.zeros((), dtype)
        weight = jnp.asarray(float(order == 2), jnp.result_type(lr))
        return cls(lr, weight, rates)

    def __call__(self, t, y, objective):
        return _modified(y, objective, self.lr, self.weight)


def modified_flow(loss, model, *, lr, order: int = 1, rates=None, **kwargs):
    r"""`gradient_flow(loss, model, field=ModifiedField(lr, order, rates), ...)`:
    the modified flow of gradient descent with step `lr`, on GD's clock t = k·lr.
    Every other keyword is `gradient_flow`'s. Differentiable in `lr` (traced) as
    in the model, rates and data."""
    return gradient_flow(loss, model, field=ModifiedField(lr, order, rates), **kwargs)
