r"""What the central flows (`CentralFlowField`, `RMSPropCentralFlowField`) share:
the top eigenpairs of the preconditioned Hessian P^½HP^½, the third-derivative
products g_ab = ∇_θ(u_aᵀ∇²L(θ)u_b), the per-save diagnostics, and the run on
the flow engine.

Symmetric k×k matrices are handled in svec coordinates (`solve_psd_qp`): pair
p = (a, b), a ≤ b, in upper-triangle order, off-diagonal entries times √2, so
that ⟨X, Y⟩ = svec(X)·svec(Y).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import positive_int
from .._lanczos import lanczos
from ._common import split_model
from ._flat import FlatLayout
from ._flow import _flat_rates, gradient_flow
from ._objective import Objective

MAX_K = 8


def check_k(k) -> int:
    k = positive_int("k", k)
    if k > MAX_K:
        raise ValueError(
            f"`k` must be an integer from 1 to {MAX_K} (the eigenvalues held at "
            f"the edge; the QP is over k×k matrices), got {k}."
        )
    return k


def pairs(k: int):
    """(rows, cols, scale) of the svec pairs: a, b with a ≤ b, and 1 or √2."""
    rows, cols = np.triu_indices(k)
    return rows, cols, np.where(rows == cols, 1.0, np.sqrt(2.0))


def top_pairs(y, objective, root, key, k: int, steps: int):
    """The top-k Ritz pairs of P^½HP^½ at θ = `y` (largest first), by Lanczos
    from a start vector drawn with `key`; `root` is P^½ (a vector, or 1.0).
    Returns the Ritz values and the rows of U = P^½W, shape (k, D)."""
    dim = y.shape[0]
    start = jax.random.normal(key, (dim,), y.dtype)
    values, vectors = lanczos(
        lambda v: root * objective.hvp(y, root * v), start, min(steps, dim)
    )
    top = slice(-1, -k - 1, -1)
    return values[top], root * vectors[:, top].T


def third_derivatives(objective, y, rows_u, k: int):
    """ĝ_p = g_ab = ∇_θ(u_aᵀ∇²L(θ)u_b) at fixed u (a gradient of a jvp of the
    gradient), in svec order (off-diagonals × √2), shape (k(k+1)/2, D)."""
    rows, cols, scale = pairs(k)

    def third(u, v):
        return jax.grad(lambda p: u @ objective.hvp(p, v))(y)

    return jax.vmap(third)(rows_u[rows], rows_u[cols]) * scale[:, None]


@eqx.filter_jit
def save_diagnostics(field, objective, params, saved, state):
    """`field.diagnostics(y, objective)` at every saved state y = [θ; s], from
    the saved trainable leaves `saved` (stacked along a leading axis) and the
    saved extra state `state` (or None), one save at a time: a `lax.scan`, whose
    body is compiled once and unbatched (faster to compile and to run than a
    `vmap` over the QP's `lax.while_loop`). A save equal to the one before (a
    repeated save time, or the saves past a stop) reuses its diagnostics. Saves
    past a stop are inf; they are evaluated on the finite stand-in `field.start`
    at `params` and reported as inf. Raveling inside the program keeps it to one
    compilation."""
    layout = objective.layout
    saved = jax.vmap(layout.ravel)(saved)
    if state is not None:
        saved = jnp.concatenate([saved, state], axis=1)
    stand_in = field.start(layout.ravel(params), objective)
    finite = jnp.all(jnp.isfinite(saved), axis=1)
    filled = jnp.where(finite[:, None], saved, stand_in)

    def diagnostics(y):
        return field.diagnostics(y, objective)

    def body(carry, y):
        previous, out = carry
        out = lax.cond(jnp.all(y == previous), lambda: out, lambda: diagnostics(y))
        return (y, out), out

    shapes = jax.eval_shape(diagnostics, stand_in)
    blank = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    never = jnp.full_like(stand_in, jnp.nan)  # equal to no save
    out = lax.scan(body, (never, blank), filled)[1]

    def mask(v):
        return jnp.where(finite.reshape((-1,) + (1,) * (v.ndim - 1)), v, jnp.inf)

    return jax.tree.map(mask, out)


def run_central(name, loss, model, make_field, *, k, lanczos_steps, t1, ts, kwargs):
    """Solve `make_field(steps)` on the engine (`steps`: `lanczos_steps` capped
    at D) and evaluate its diagnostics at the saves, from the saved θ and, for a
    field with extra state, `aux["state"]`. Returns (trajectory, field,
    diagnostics); `name` is the caller's, for the messages."""
    if "field" in kwargs:
        raise TypeError(f"`{name}` builds its own `field`; do not pass one.")
    trainable = kwargs.get("trainable")
    params, static = split_model(model, trainable)
    layout = FlatLayout.of(params)
    k = check_k(k)
    if k > layout.size:
        raise ValueError(
            f"`k` = {k} exceeds the number of trainable parameters D = {layout.size}."
        )
    field = make_field(min(positive_int("lanczos_steps", lanczos_steps), layout.size))
    traj = gradient_flow(loss, model, t1=t1, ts=ts, field=field, **kwargs)
    objective = Objective(
        loss, static, layout, _flat_rates(field, model, params, layout)
    )
    saved = split_model(traj.models, trainable)[0]
    aux = save_diagnostics(field, objective, params, saved, traj.aux.get("state"))
    return traj, field, aux
