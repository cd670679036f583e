import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm
from jaxtyping import Array, Float

from ._flat import flatten


def _blocks(where, model) -> list:
    selected = where(model)
    leaves = selected if isinstance(selected, tuple | list) else (selected,)
    if not leaves or not all(eqx.is_inexact_array(x) for x in leaves):
        raise ValueError(
            "`where` must select one floating-point array of the model, or a tuple of "
            "them (as for eqx.tree_at)."
        )
    return list(leaves)


def _sum_sq(where, model):
    return sum(jnp.sum(x**2) for x in _blocks(where, model))


class AbstractSymmetry(eqx.Module):
    """A one-parameter group θ ↦ act(θ, a) that leaves the loss unchanged, and the
    conserved quantity it gives (Kunin et al. 2021)."""

    @abc.abstractmethod
    def act(self, model, a):
        """The model transformed by group element a."""

    @abc.abstractmethod
    def invariant(self, model) -> Float[Array, ""]:
        """The conserved quantity Q(model)."""

    def verify(self, loss, model, *, key, samples: int = 5, size: float = 0.5) -> float:
        """max over random a ~ N(0, size²) of
        |L(act(θ, a)) − L(θ)| / max(|L(θ)|, 1e-300): round-off for a true symmetry."""
        base = loss(model)
        values = [
            abs(float(loss(self.act(model, a)) - base))
            for a in size * np.asarray(jax.random.normal(key, (samples,)))
        ]
        return max(values) / max(abs(float(base)), 1e-300)


class ScaleSymmetry(AbstractSymmetry):
    r"""L(e^a θ_A) = L(θ) for the block A = `where(model)`: Q = ‖θ_A‖².
    (E.g. the direction v of a weight-normalised vector.)"""

    where: object = eqx.field(static=True)

    def act(self, model, a):
        return eqx.tree_at(self.where, model, replace_fn=lambda x: jnp.exp(a) * x)

    def invariant(self, model):
        return _sum_sq(self.where, model)


class RescaleSymmetry(AbstractSymmetry):
    r"""L(e^a θ_{A₁}, e^{−a} θ_{A₂}) = L(θ): Q = ‖θ_{A₁}‖² − ‖θ_{A₂}‖²
    (a hidden unit's incoming and outgoing weights for a homogeneous σ)."""

    where_in: object = eqx.field(static=True)
    where_out: object = eqx.field(static=True)

    def act(self, model, a):
        model = eqx.tree_at(self.where_in, model, replace_fn=lambda x: jnp.exp(a) * x)
        return eqx.tree_at(self.where_out, model, replace_fn=lambda x: jnp.exp(-a) * x)

    def invariant(self, model):
        return _sum_sq(self.where_in, model) - _sum_sq(self.where_out, model)


class TranslationSymmetry(AbstractSymmetry):
    r"""L(θ_A + a·1) = L(θ): Q = ⟨θ_A, 1⟩ (e.g. logits' shift under softmax)."""

    where: object = eqx.field(static=True)

    def act(self, model, a):
        return eqx.tree_at(self.where, model, replace_fn=lambda x: x + a)

    def invariant(self, model):
        return sum(jnp.sum(x) for x in _blocks(self.where, model))


class LinearSymmetry(AbstractSymmetry):
    r"""L(exp(aG)θ) = L(θ) for a symmetric generator G acting on the flat trainable
    parameters (order of `jax.flatten_util.ravel_pytree`): Q = ½θᵀGθ, since
    ⟨∇L, Gθ⟩ = 0 and ∇Q = Gθ. (Antisymmetric generators — rotations — give no
    gradient-field invariant this way.)"""

    generator: Float[Array, "dim dim"]

    def __init__(self, generator, model):
        generator = jnp.asarray(generator)
        dim = flatten(model)[0].shape[0]
        if generator.shape != (dim, dim):
            raise ValueError(
                f"`generator` must be a ({dim}, {dim}) matrix on the model's {dim} "
                f"trainable parameters, got shape {generator.shape}."
            )
        if not np.allclose(generator, generator.T, rtol=1e-12, atol=1e-14):
            raise ValueError("`generator` must be symmetric for Q = ½θᵀGθ.")
        self.generator = generator

    def act(self, model, a):
        theta, rebuild = flatten(model)
        return rebuild(expm(a * self.generator) @ theta)

    def invariant(self, model):
        theta, _ = flatten(model)
        return 0.5 * theta @ self.generator @ theta
