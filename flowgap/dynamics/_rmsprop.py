r"""RMSProp and its flow on one clock t = k·η: the flow `RMSPropField` (state
(θ, ν)), the entry `rmsprop_flow`, and `rmsprop_optimizer`, the optax optimizer
of the discrete RMSProp it models.

**Discrete RMSProp** (optax's `rmsprop` with `eps_in_sqrt=False`, no momentum,
no bias correction), from ν₀:

$$\nu_{k+1} = b_2\nu_k + (1 - b_2)\,g_k^{2},\qquad
  \theta_{k+1} = \theta_k - \frac{\eta}{\sqrt{\nu_{k+1}} + \varepsilon}\,g_k,
  \qquad g_k = \nabla L(\theta_k),$$

per parameter (diagonal ν), or with g² replaced by ‖g‖² and one number ν
(scalar ν; `scalar=True`, `rmsprop_optimizer(..., scalar=True)`).

**The flow.** On the clock t = kη the ν-update is a relaxation at rate
ρ = (1 − b₂)/η per unit time, and the θ-step is GD's with the rates
P(ν) = 1/(√ν + ε):

$$\dot\theta = -P(\nu)\,\nabla L(\theta),\qquad
  \dot\nu = \rho\,\big(\nabla L(\theta)^{2} - \nu\big),\qquad
  \rho = \frac{1 - b_2}{\eta},\qquad (\theta, \nu)(0) = (\theta_0, \nu_0).$$

RMSProp is a first-order method for this ODE with step η: ν is advanced by
explicit Euler (ν_{k+1} = ν_k + ηρ(g_k² − ν_k) is the optax update exactly),
then θ by explicit Euler with the new ν, which differs from P(ν_k) by
O(1 − b₂) = O(ηρ). So ν(t_k) ↔ the optimizer's state ν_k *before* step k, and
ν(0) = ν₀ ↔ optax's `initial_scale`. With ρ held fixed (1 − b₂ = ρη), RMSProp
is O(η) from the flow, as GD is from gradient flow. (Reading ν(t_k) as ν_{k+1},
the ν in step k, makes the ν-update an implicit Euler step at rate
(1 − b₂)/(b₂η), another first-order choice; the two rates differ by a factor
1/b₂, i.e. O(η) at fixed ρ.)

With b₂ fixed and η → 0 instead, ρ → ∞: ν is slaved to ∇L², and the limit is
a sign-like flow −∇L/(|∇L| + ε), not gradient flow.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from .._checks import as_scalar, is_concrete, positive_scalar
from ._field import AbstractField
from ._flow import gradient_flow
from ._trajectory import Trajectory


def check_b2(b2):
    """b₂ ∈ [0, 1): ν's decay per step."""
    arr = as_scalar("b2", b2)
    if is_concrete(arr):
        v = float(arr)
        if not (math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"`b2` must lie in [0, 1), got {v!r}.")
        return arr
    bad = ~(jnp.isfinite(arr) & (arr < 1) & (arr >= 0))
    return eqx.error_if(arr, bad, "`b2` must lie in [0, 1).")


def check_eps(eps):
    """ε ≥ 0, finite."""
    arr = as_scalar("eps", eps)
    if is_concrete(arr):
        v = float(arr)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"`eps` must be a finite number ≥ 0, got {v!r}.")
        return arr
    return eqx.error_if(
        arr, ~(jnp.isfinite(arr) & (arr >= 0)), "`eps` must be finite and ≥ 0."
    )


def check_nu0(nu0, scalar: bool):
    """None, a number, or (diagonal ν) a pytree shaped like the trainable
    parameters; non-negative and finite where it is concrete."""
    if nu0 is None:
        return None
    leaves = jax.tree.leaves(nu0)
    arrays = int | float | jax.Array | np.ndarray
    if not leaves or not all(isinstance(x, arrays) for x in leaves):
        raise TypeError(
            "`nu0` must be None, a number, or a pytree of arrays shaped like the "
            f"trainable parameters; got {type(nu0).__name__}."
        )
    if scalar and (len(leaves) != 1 or jnp.ndim(leaves[0]) != 0):
        raise ValueError("`nu0` must be a number for scalar ν (`scalar=True`).")
    nu0 = jax.tree.map(jnp.asarray, nu0)
    for x in jax.tree.leaves(nu0):
        if is_concrete(x) and not bool(jnp.all(jnp.isfinite(x) & (x >= 0))):
            raise ValueError("`nu0` must be finite and ≥ 0 (it is a mean square).")
    return nu0


class AbstractRMSPropField(AbstractField):
    r"""What RMSProp's flows share: the state y = [θ; ν] (ν of length D, or 1
    for scalar ν), P(ν) = 1/(√ν + ε), ρ = (1 − b₂)/η, and the start
    (θ₀, ν₀) with ν₀ = ∇L(θ₀)² (‖∇L(θ₀)‖² for scalar ν) by default."""

    lr: eqx.AbstractVar[Float[Array, ""]]
    b2: eqx.AbstractVar[Float[Array, ""]]
    eps: eqx.AbstractVar[Float[Array, ""]]
    nu0: eqx.AbstractVar[PyTree | None]
    scalar: eqx.AbstractVar[bool]

    @property
    def nu_rate(self) -> Float[Array, ""]:
        """ρ = (1 − b₂)/η, ν's relaxation rate per unit time."""
        return (1 - self.b2) / self.lr

    def split(self, y, objective):
        """(θ, ν) from the state y = [θ; ν]."""
        size = objective.layout.size
        return y[:size], y[size:]

    def reduce(self, v):
        """v itself for diagonal ν; its sum (shape (…, 1)) for scalar ν."""
        return jnp.sum(v, axis=-1, keepdims=True) if self.scalar else v

    def rates_of(self, nu):
        """P(ν) = 1/(√ν + ε), in ν's shape (it broadcasts against θ)."""
        return 1 / (jnp.sqrt(nu) + self.eps)

    def initial_nu(self, y0, objective, *, positive: bool):
        """ν₀ as a flat vector (length D, or 1), checked finite and positive
        (or ≥ 0) under jit."""
        if self.nu0 is None:
            nu = self.reduce(objective.grad(y0) ** 2)
        elif self.scalar:
            nu = jnp.reshape(self.nu0, (1,))
        elif isinstance(self.nu0, jax.Array) and self.nu0.ndim == 0:
            nu = jnp.broadcast_to(self.nu0, y0.shape)
        else:
            nu = objective.layout.ravel(self.nu0)
        nu = nu.astype(y0.dtype)
        bad = ~jnp.all(nu > 0) if positive else ~jnp.all(nu >= 0)
        need = "positive" if positive else "≥ 0"
        return eqx.error_if(
            nu,
            bad | ~jnp.all(jnp.isfinite(nu)),
            f"ν₀ must be finite and {need} (a zero gradient entry at θ₀ with the "
            "default ν₀ = ∇L(θ₀)²? pass `nu0`).",
        )

    def drift(self, grad, nu):
        """ρ(∇L² − ν) (ρ(‖∇L‖² − ν) for scalar ν): ν̇ of the stable flow."""
        return self.nu_rate * (self.reduce(grad**2) - nu)


class RMSPropField(AbstractRMSPropField):
    r"""RMSProp's flow (see the module docstring): on y = [θ; ν],

    $$\dot\theta = -\frac{\nabla L(\theta)}{\sqrt\nu + \varepsilon},\qquad
      \dot\nu = \frac{1 - b_2}{\eta}\big(\nabla L(\theta)^{2} - \nu\big),$$

    per parameter, or with ‖∇L‖² and one ν (`scalar=True`). Discrete RMSProp
    with step η (`rmsprop_optimizer`, or `optax.rmsprop(η, decay=b2, eps=eps,
    eps_in_sqrt=False, initial_scale=ν₀)`) is a first-order method for it.

    **Fields:** `lr` (η > 0), `b2` (b₂ ∈ [0, 1)), `eps` (ε ≥ 0), all traced;
    `nu0` (ν₀: None for ∇L(θ₀)² (‖∇L(θ₀)‖² for scalar ν), a number, or a pytree
    shaped like the trainable parameters; ≥ 0, and > 0 where ε = 0);
    `scalar` (static). No `rates`: P is the state's.
    """

    lr: Float[Array, ""]
    b2: Float[Array, ""]
    eps: Float[Array, ""]
    nu0: PyTree | None
    scalar: bool = eqx.field(static=True)
    rates: None = None
    grad_evals_per_call = 1

    def __init__(self, lr, b2, *, eps=1e-8, nu0=None, scalar: bool = False):
        self.lr = positive_scalar("lr", lr)
        self.b2 = check_b2(b2)
        self.eps = check_eps(eps)
        self.scalar = check_scalar(scalar)
        self.nu0 = check_nu0(nu0, self.scalar)

    def start(self, y0, objective):
        # ν = 0 is allowed where ε > 0 (P = 1/ε there)
        nu = self.initial_nu(y0, objective, positive=False)
        nu = eqx.error_if(
            nu, (self.eps == 0) & ~jnp.all(nu > 0), "ν₀ must be > 0 when `eps` = 0."
        )
        return jnp.concatenate([y0, nu])

    def __call__(self, t, y, objective):
        theta, nu = self.split(y, objective)
        grad = objective.grad(theta)
        return jnp.concatenate([-self.rates_of(nu) * grad, self.drift(grad, nu)])


def check_scalar(scalar) -> bool:
    if not isinstance(scalar, bool):
        raise TypeError(f"`scalar` must be True or False, got {scalar!r}.")
    return scalar


def with_nu(traj: Trajectory, scalar: bool, aux: dict | None = None) -> Trajectory:
    """The trajectory with the engine's `aux["state"]` named `aux["nu"]` ((S, D),
    or (S,) for scalar ν), after the entries of `aux`."""
    state = traj.aux["state"]
    nu = state[:, 0] if scalar else state
    return eqx.tree_at(lambda t: t.aux, traj, {**(aux or {}), "nu": nu})


def rmsprop_flow(
    loss, model, *, lr, b2, eps=1e-8, nu0=None, scalar: bool = False, **kwargs
) -> Trajectory:
    r"""`gradient_flow(loss, model, field=RMSPropField(lr, b2, ...), ...)`:
    RMSProp's flow on its clock t = k·η (see `RMSPropField` and the theory page
    "Central flow"), below the edge of stability the continuous model of
    `gradient_descent(..., optimizer=functools.partial(rmsprop_optimizer,
    b2=b2, eps=eps, nu0=nu0, scalar=scalar))`.

    **Arguments:** `lr` (η), `b2`, `eps`, `nu0`, `scalar` as for
    `RMSPropField`; `loss`, `model` and every other keyword as for
    `gradient_flow` (not `field`, nor `rates`).

    **Returns:** a `Trajectory` whose `aux["nu"]` is ν at the saves, shape
    (S, D) (flat, in the order of `FlatLayout`), or (S,) for scalar ν.
    """
    if "field" in kwargs:
        raise TypeError("`rmsprop_flow` builds its own `field`; do not pass one.")
    field = RMSPropField(lr, b2, eps=eps, nu0=nu0, scalar=scalar)
    return with_nu(gradient_flow(loss, model, field=field, **kwargs), scalar)


class _RMSPropState(NamedTuple):
    nu: PyTree  # ν_k, like the parameters, or one number for scalar ν
    started: Array  # False until the first step (ν₀ = g₀² by default)


def _scale_by_rmsprop(b2, eps, nu0, scalar) -> optax.GradientTransformation:
    def init(params):
        dtype = jnp.result_type(*jax.tree.leaves(params))
        if scalar:
            nu = jnp.asarray(0.0 if nu0 is None else nu0, dtype)
        elif nu0 is None or (isinstance(nu0, jax.Array) and nu0.ndim == 0):
            value = 0.0 if nu0 is None else nu0
            nu = jax.tree.map(lambda p: jnp.full_like(p, value), params)
        else:
            nu = jax.tree.map(lambda v, p: jnp.asarray(v, p.dtype), nu0, params)
        return _RMSPropState(nu, jnp.asarray(nu0 is not None))

    def update(updates, state, params=None):
        del params
        if scalar:
            square = optax.tree.norm(updates, squared=True)
            old = jnp.where(state.started, state.nu, square)
            nu = b2 * old + (1 - b2) * square
            out = jax.tree.map(lambda g: g / (jnp.sqrt(nu) + eps), updates)
        else:
            old = jax.tree.map(
                lambda n, g: jnp.where(state.started, n, g**2), state.nu, updates
            )
            nu = optax.tree.update_moment_per_elem_norm(updates, old, b2, 2)
            out = jax.tree.map(lambda n, g: g / (jnp.sqrt(n) + eps), nu, updates)
        return out, _RMSPropState(nu, jnp.asarray(True))

    return optax.GradientTransformation(init, update)


def rmsprop_optimizer(
    learning_rate, *, b2, eps=1e-8, nu0=None, scalar: bool = False
) -> optax.GradientTransformation:
    r"""Discrete RMSProp exactly as `RMSPropField` models it (module docstring):
    ν_{k+1} = b₂ν_k + (1 − b₂)g_k², θ_{k+1} = θ_k − ηg_k/(√ν_{k+1} + ε), ε
    outside the root, per parameter or (`scalar=True`) with ‖g_k‖² and one ν.

    For diagonal ν and a number `nu0` this is `optax.rmsprop(learning_rate,
    decay=b2, eps=eps, eps_in_sqrt=False, initial_scale=nu0)`, step for step;
    it adds ν₀ = g₀² (`nu0=None`, the flows' default: the first step then
    keeps ν₁ = g₀²), a per-parameter pytree `nu0`, and scalar ν. Pass it to
    `gradient_descent` as `optimizer=functools.partial(rmsprop_optimizer,
    b2=b2, eps=eps, nu0=nu0, scalar=scalar)`: `lr` is then η, traced.
    """
    b2, eps = check_b2(b2), check_eps(eps)
    scalar = check_scalar(scalar)
    nu0 = check_nu0(nu0, scalar)
    return optax.chain(
        _scale_by_rmsprop(b2, eps, nu0, scalar),
        optax.scale_by_learning_rate(learning_rate),
    )
