import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class Linear(eqx.Module):
    """f(x) = ⟨w, x⟩: linear least squares as a model."""

    w: jax.Array

    def __call__(self, x):
        return self.w @ x


def tree_allclose(a, b, *, rtol=0.0, atol=0.0) -> bool:
    """Same structure and every array leaf close (non-array leaves equal)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if eqx.is_array(x):
            if x.shape != jnp.shape(y) or not np.allclose(x, y, rtol=rtol, atol=atol):
                return False
        elif x != y:
            return False
    return True


def tree_distance(a, b) -> float:
    """‖a − b‖₂ over all inexact array leaves."""
    la = jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))
    return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(la, lb))))


def quadratic(dim: int, key, *, lo=0.5, hi=2.0):
    """A random SPD matrix A with spectrum in [lo, hi], a vector b, and
    L(θ) = ½θᵀAθ − bᵀθ with minimiser θ* = A⁻¹b."""
    k1, k2 = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, dim)))
    a = q @ jnp.diag(jnp.linspace(lo, hi, dim)) @ q.T
    b = jax.random.normal(k2, (dim,))

    def loss(theta):
        return 0.5 * theta @ a @ theta - b @ theta

    return a, b, loss


def counting_loss(loss):
    """(`loss` that records every execution of its forward pass, the record): a
    gradient or a Hessian-vector product runs the forward pass once, so the
    record is an evaluation counter independent of the trainer's own."""
    calls = []

    def counted(model):
        jax.debug.callback(lambda: calls.append(1))
        return loss(model)

    return counted, calls
