"""Named activation functions.

Activations are referred to by name (a static string), so that later analysis can
ask structural questions of them, e.g. whether σ is positively homogeneous
(σ(a z) = a σ(z) for a > 0), which decides whether per-unit rescaling laws exist,
or whether σ has a kink, which makes the gradient flow non-smooth.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import one_of

ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, negative_slope=0.01),
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
}

#: Activations with σ(a z) = a σ(z) for all a > 0.
POSITIVELY_HOMOGENEOUS = frozenset({"linear", "relu", "leaky_relu"})
#: Activations that are C^∞ (needed where third derivatives of the loss are used).
SMOOTH = frozenset({"linear", "tanh", "gelu", "silu", "softplus", "sigmoid"})
#: Activations with a kink, a point where σ' jumps (z = 0): ∇L of a model using
#: one jumps wherever a unit's input changes sign, so its gradient flow is
#: non-smooth (docs: non-smooth).
KINKED = frozenset({"relu", "leaky_relu"})

# Functions with a kink (σ' jumps somewhere), found in a model's fields by
# identity: JAX's own, and flowgap's named ones. C¹ functions whose second
# derivative jumps (elu, celu, soft_sign, sparse_plus) leave ∇L continuous and
# are not listed.
_KINKED_FUNCTIONS = (
    (jax.nn.relu, "relu"),
    (jax.nn.relu6, "relu6"),
    (jax.nn.leaky_relu, "leaky_relu"),
    (jax.nn.hard_tanh, "hard_tanh"),
    (jax.nn.hard_sigmoid, "hard_sigmoid"),
    (jax.nn.hard_silu, "hard_silu"),
    (jax.nn.selu, "selu"),
    (jnp.abs, "abs"),
    (jnp.absolute, "abs"),
    (jnp.maximum, "maximum"),
    (jnp.minimum, "minimum"),
    (jnp.max, "max"),
    (jnp.min, "min"),
    (jnp.clip, "clip"),
    (lax.abs, "abs"),
    (lax.max, "max"),
    (lax.min, "min"),
    *((ACTIVATIONS[name], name) for name in sorted(KINKED)),
)


def activation_fn(name: str):
    """The function registered under `name`; ValueError listing the choices if none."""
    if not isinstance(name, str):
        raise TypeError(
            f"`activation` must be a string name, got {type(name).__name__}."
        )
    one_of("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]


def slope_at_zero(name: str) -> float:
    """σ'(0), after checking σ(0) = 0 < σ'(0) (else a zero unit sits at no saddle
    and `flowgap.dynamics.saddle_skip` cannot start there)."""
    sigma = activation_fn(name)
    at_zero = float(sigma(jnp.asarray(0.0)))
    slope = float(jax.grad(sigma)(jnp.asarray(0.0)))
    if at_zero != 0.0 or not slope > 0.0:
        raise ValueError(
            "`model` must have an activation with σ(0) = 0 and σ'(0) > 0 (e.g. "
            f"'linear', 'tanh'), so that zero units sit at a saddle; got "
            f"{name!r} (σ(0) = {at_zero:g}, σ'(0) = {slope:g})."
        )
    return slope


def kink_name(fn) -> str | None:
    """The name of `fn` if it is a function with a kink (`jax.nn.relu`,
    `jax.nn.leaky_relu`, `jnp.abs`, `jax.nn.hard_tanh`, `lax.max`, …, or one of
    flowgap's `KINKED` activations), looked through `functools.partial`; else
    None. By identity: a lambda that calls one is not recognised."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return next((name for kinked, name in _KINKED_FUNCTIONS if fn is kinked), None)
