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
# saves processed at once by `lax.map`, as the engine does for the losses
_SAVE_BATCH = 32


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
def save_diagnostics(field, objective, saved, stand_in):
    """`field.diagnostics(y, objective)` at every saved state, `_SAVE_BATCH`
    saves at a time (a `lax.map` over batches padded with `stand_in`, so the
    body is traced once). Saves past a stop are inf; they are evaluated on the
    finite stand-in and reported as inf."""
    count = saved.shape[0]
    batch = min(_SAVE_BATCH, count)
    padded = -(-count // batch) * batch
    finite = jnp.all(jnp.isfinite(saved), axis=1)
    filled = jnp.where(finite[:, None], saved, stand_in)
    filled = jnp.concatenate(
        [filled, jnp.broadcast_to(stand_in, (padded - count,) + stand_in.shape)]
    )
    at = jax.vmap(lambda y: field.diagnostics(y, objective))
    out = lax.map(at, filled.reshape((padded // batch, batch) + stand_in.shape))

    def unbatch(v):
        v = v.reshape((padded,) + v.shape[2:])[:count]
        return jnp.where(finite.reshape((count,) + (1,) * (v.ndim - 1)), v, jnp.inf)

    return jax.tree.map(unbatch, out)


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
    saved = jax.vmap(layout.ravel)(split_model(traj.models, trainable)[0])
    if "state" in traj.aux:
        saved = jnp.concatenate([saved, traj.aux["state"]], axis=1)
    stand_in = field.start(layout.ravel(params), objective)
    return traj, field, save_diagnostics(field, objective, saved, stand_in)
