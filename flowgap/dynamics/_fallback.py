"""Gradient flow with an implicit re-solve where the explicit solve fails."""

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax

from .._checks import is_concrete, positive_int
from ._flow import gradient_flow
from ._flow_options import check_solver
from ._results import SolverError
from ._trajectory import Trajectory


def gradient_flow_with_fallback(
    loss,
    model,
    *,
    fallback_solver: diffrax.AbstractSolver = diffrax.Kvaerno5(),
    fallback_max_steps: int = 10_000,
    throw: bool = False,
    **kwargs,
) -> Trajectory:
    r"""`gradient_flow`, re-solved by an implicit solver wherever the first
    (explicit) solve fails.

    Why: a flow can be stiff on only part of a sweep. The polar diagonal net's
    flow at small init scale α and large rate ratio ρ is (docs:
    studies/wn-robust-bias; the model in theory/implicit-bias, "The polar
    network"): an explicit solver's step is held at its stability bound and it
    hits `max_steps`, while elsewhere the explicit solve is the cheaper one. So:
    solve with `solver` (default `Tsit5()`); where the run did not end normally
    (`traj.successful`: ran to t1 or stopped by `stop_when`), solve again from
    the same start with `fallback_solver` and keep that run.

    Traceable: under `jax.vmap` the fallback runs only if some member of the
    batch failed (`lax.cond` on `equinox.internal.unvmap_any`), and each member
    keeps its own run (`jnp.where`). On concrete values it is a Python branch:
    the fallback is not even compiled when the explicit solve succeeds.

    **Arguments:**

    - `loss`, `model` and the keywords of `gradient_flow` (`t1`, `ts`, `field`,
      `solver`, `rtol`, `atol`, `stop_when`, `max_steps`, `rates`, ...), passed
      to both solves; the fallback swaps in `fallback_solver` and
      `fallback_max_steps`. `dense=True` raises a `ValueError`: the two
      solvers' interpolations differ in shape, so one batch cannot hold both.
    - `fallback_solver`: a stiff Diffrax solver (default `Kvaerno5()`).
    - `fallback_max_steps`: the fallback's step budget (static); implicit steps
      are not stability-limited, but each costs Jacobian solves.
    - `throw`: raise `SolverError` (under `jit`, an `eqx.error_if` error) where
      the fallback fails too.

    **Returns:** the `Trajectory` of the run kept; its `stats` gain `fallback`,
    a boolean array, True where the fallback run was kept (its `num_steps` etc.
    are then the fallback's; `num_field_evals` is −1).
    """
    if kwargs.get("dense", False):
        raise ValueError(
            "`dense=True`: the explicit and fallback interpolations differ in "
            "shape; call `gradient_flow(..., dense=True)` with one solver instead."
        )
    fallback_solver = check_solver(fallback_solver)
    fallback_max_steps = positive_int("fallback_max_steps", fallback_max_steps)
    traj = gradient_flow(loss, model, throw=False, **kwargs)

    def fallback():
        options = dict(kwargs, solver=fallback_solver, max_steps=fallback_max_steps)
        return gradient_flow(loss, model, throw=False, **options)

    traj = _fall_back_where_failed(traj, fallback)
    if throw:
        traj = _throw_if_failed(traj, fallback_solver, fallback_max_steps)
    return traj


def _fall_back_where_failed(traj: Trajectory, fallback) -> Trajectory:
    """`fallback()`'s run where `traj` failed, `traj` elsewhere; the fallback
    runs only if some run (of a vmapped batch) failed."""
    failed = ~traj.successful
    if is_concrete(failed):
        if bool(jnp.any(failed)):
            traj = _select(failed, fallback(), traj)
    else:
        # lax.cond carries arrays only: the model's static parts stay outside.
        dynamic, static = eqx.partition(traj, eqx.is_array)

        def redo():
            again, _ = eqx.partition(fallback(), eqx.is_array)
            return _select(failed, again, dynamic)

        dynamic = lax.cond(eqxi.unvmap_any(failed), redo, lambda: dynamic)
        traj = eqx.combine(dynamic, static)
    return eqx.tree_at(lambda t: t.stats, traj, {**traj.stats, "fallback": failed})


def _select(mask, when_true, when_false):
    """`when_true` where the scalar `mask`, else `when_false`, leaf by leaf
    (dtypes of `when_false`, so both branches of a `lax.cond` agree)."""

    def pick(a, b):
        return jnp.where(mask, a, b).astype(b.dtype) if eqx.is_array(b) else b

    return jax.tree.map(pick, when_true, when_false)


def _throw_if_failed(traj, solver, max_steps):
    failed = ~traj.successful
    message = (
        "gradient flow failed with the explicit solver and with the fallback "
        f"{type(solver).__name__} (fallback_max_steps={max_steps}); raise "
        "`fallback_max_steps` or loosen `rtol`/`atol`."
    )
    if is_concrete(failed):
        if bool(jnp.any(failed)):
            raise SolverError(message + " The trajectory is on `err.trajectory`.", traj)
        return traj
    checked = eqx.error_if(traj.loss, failed, message)
    return eqx.tree_at(lambda t: t.loss, traj, checked)
