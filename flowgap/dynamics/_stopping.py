import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, PyTree

from .._checks import positive_scalar


class AbstractStopCondition(eqx.Module):
    """A convergence test for `stop_when=`: given L(θ) and ∇L(θ), return True
    to stop. Used at every GD step and, as a `diffrax.Event`, after every
    accepted ODE step, so both clocks stop by the same rule."""

    @abc.abstractmethod
    def __call__(self, value: Float[Array, ""], grads: PyTree) -> Bool[Array, ""]:
        raise NotImplementedError


class LossBelow(AbstractStopCondition):
    """Stop once L(θ) < `tol`."""

    tol: Float[Array, ""]

    def __init__(self, tol):
        self.tol = positive_scalar("tol", tol)

    def __call__(self, value, grads):
        return value < self.tol


class GradNormBelow(AbstractStopCondition):
    """Stop once ‖∇L(θ)‖₂ < `tol` (unpreconditioned gradient)."""

    tol: Float[Array, ""]

    def __init__(self, tol):
        self.tol = positive_scalar("tol", tol)

    def __call__(self, value, grads):
        return optax.tree.norm(grads) < self.tol


def check_stop_condition(stop_when):
    if stop_when is not None and not isinstance(stop_when, AbstractStopCondition):
        raise TypeError(
            "`stop_when` must be None or a flowgap.dynamics stop condition such as "
            f"LossBelow(tol) or GradNormBelow(tol); got {type(stop_when).__name__}."
        )
    return stop_when


def any_nonfinite(tree) -> Bool[Array, ""]:
    leaves = [jnp.any(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.any(jnp.stack(leaves)) if leaves else jnp.array(False)
