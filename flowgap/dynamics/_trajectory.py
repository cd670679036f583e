import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._checks import is_concrete
from ._results import RESULTS


class Trajectory(eqx.Module):
    """The saved states of one training run, on the shared clock.

    **Fields:**

    - `ts`: save times, shape (S,). For gradient descent tₖ = k·lr; for gradient
      flow the requested `ts`. `ts[0] = 0`: the initial point is always saved.
    - `models`: the model with a leading axis of length S on every array leaf
      (frozen and integer arrays included); functions, static fields and other
      non-array leaves appear once.
    - `loss`: L at each save, shape (S,).
    - `final`: the model where the run ended (t1, or the stop time if a
      `stop_when` condition fired or the run failed), with no time axis.
    - `final_loss`: L(`final`).
    - `stop_time`: the time at which the run ended (t1 when it ran to the end).
    - `result`: a `flowgap.RESULTS` status: `successful`, `event_occurred`
      (stopped by `stop_when`), `diverged`, or one of Diffrax's solver failures.
    - `stats`: counters. `num_steps` (GD steps taken / ODE solver steps),
      `num_accepted_steps`, `num_rejected_steps`; `num_grad_evals`, every
      evaluation of ∇L actually executed: for GD, K for a run that does not stop,
      k + 1 for one stopped at step k (the gradient at θ_k that found the stop
      counts), plus the unguarded pass and the replay of a chunk that diverged
      (under `jax.vmap` each run counts what its batch executed); for flows the
      field's evaluations (s per explicit Runge–Kutta step, s − 1 (+1) for FSAL
      tableaus, times the field's `grad_evals_per_call`) plus the `stop_when`
      event's gradients, −1 where unknown (implicit solvers); `num_loss_evals`,
      evaluations of L alone (so `num_grad_evals + num_loss_evals` is the number
      of forward passes of `loss`). Flows add `num_field_evals`; GD adds
      `stop_step` (the step at which the run stopped, −1 if it ran to the end),
      `last_finite_loss` and `stop_loss`.

    - `interpolation`: for `gradient_flow(..., dense=True)`, Diffrax's dense
      interpolation of the parameters (see `at`); None otherwise.
    - `aux`: per-save diagnostics of the flow that produced the run, each with a
      leading axis of length S (empty for the trainers that report none). A
      flow whose field carries state beyond θ saves it as `state` (see
      `AbstractField`); the central flows fill `sharpness`, `eigs`,
      `sigma_trace`, `predicted_loss` and `qp_residual` (see `central_flow`),
      and the RMSProp flows `nu` (see `rmsprop_flow`).

    Saves after the stop time are filled with `inf` (as in Diffrax), so a stopped
    or failed run is never mistaken for a finished one: check `result`.
    Under `jax.vmap` every field gains a leading batch axis.

    `traj[i]` is the model at save i (i indexes the array leaves; an array of
    indices gives a model with that leading axis); `len(traj)` is S.
    """

    ts: Float[Array, "*batch saves"]
    models: PyTree
    loss: Float[Array, "*batch saves"]
    final: PyTree
    final_loss: Float[Array, "*batch"]
    stop_time: Float[Array, "*batch"]
    result: RESULTS
    stats: dict
    interpolation: object = None
    aux: dict = eqx.field(default_factory=dict)

    def __getitem__(self, i):
        # Only array leaves carry the time axis; functions, static fields and other
        # non-array leaves of the model are shared by every save.
        dynamic, static = eqx.partition(self.models, eqx.is_array)
        return eqx.combine(jax.tree.map(lambda x: x[i], dynamic), static)

    def __len__(self) -> int:
        return self.ts.shape[-1]

    @property
    def successful(self):
        """True where the run ended normally (ran to t1 or hit its stop event)."""
        ok = (self.result == RESULTS.successful) | (
            self.result == RESULTS.event_occurred
        )
        return ok

    def at(self, t):
        """The model at time(s) `t`: from the dense interpolation of a flow solved
        with `dense=True`, else from a save at exactly that time (ValueError if
        there is none, e.g. a GD time between steps).

        For a 1-D `t` every array leaf gains a leading axis of length len(t), as in
        `models`; non-trainable leaves are those of the first save.
        """
        t = jnp.asarray(t)
        if self.interpolation is not None:
            return self._interpolate(t)
        index = self._save_index(np.atleast_1d(np.asarray(t)))
        return self[index[0]] if t.ndim == 0 else self[index]

    def _interpolate(self, t):
        # The interpolation holds the trainable leaves only (None elsewhere); the
        # rest is filled from save 0, with a time axis when `t` has one.
        if t.ndim == 0:
            return eqx.combine(self.interpolation.evaluate(t), self[0])
        params = jax.vmap(self.interpolation.evaluate)(t)
        return eqx.combine(params, self[np.zeros(t.shape[0], dtype=int)])

    def _save_index(self, wanted):
        ts = np.asarray(self.ts)
        index = np.clip(np.searchsorted(ts, wanted), 0, len(ts) - 1)
        # A save time is a sum of steps, off by a few ulps of t: 1e-12 in
        # float64, 1e3·ε in a coarser type (1.2e-4 in float32).
        rtol = max(1e-12, 1e3 * float(np.finfo(ts.dtype).eps))
        close = np.isclose(
            ts[index], wanted, rtol=rtol, atol=rtol * max(abs(ts[-1]), 1)
        )
        if not np.all(close):
            missing = wanted[~close][0]
            raise ValueError(
                f"this trajectory has no save at t = {missing:g} (saves: {ts[0]:g} … "
                f"{ts[-1]:g}, {len(ts)} points); save at matching times, or solve the "
                "flow with `dense=True`."
            )
        return index

    def message(self) -> str:
        """Human-readable status (concrete, unbatched trajectories only)."""
        if not is_concrete(self.ts) or np.ndim(self.stop_time) != 0:
            raise ValueError("`message()` needs a concrete, unbatched Trajectory.")
        return RESULTS[self.result] or "successful"


def fill_after_stop(values: PyTree, save_times, stop_time, *, strict: bool) -> PyTree:
    """Replace saves later than `stop_time` (strictly, or at-or-after) with inf."""
    after = save_times > stop_time if strict else save_times >= stop_time

    def fill(x):
        mask = after.reshape(after.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.inf, x)

    return jax.tree.map(fill, values)
