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
    - `models`: the model with a leading axis of length S on every array leaf.
    - `loss`: L at each save, shape (S,).
    - `final`: the model where the run ended (t1, or the stop time if a
      `stop_when` condition fired or the run failed), with no time axis.
    - `final_loss`: L(`final`).
    - `stop_time`: the time at which the run ended (t1 when it ran to the end).
    - `result`: a `flowgap.RESULTS` status: `successful`, `event_occurred`
      (stopped by `stop_when`), `diverged`, or one of Diffrax's solver failures.
    - `stats`: counters: `num_steps` (GD steps taken / ODE solver steps),
      `num_accepted_steps`, `num_rejected_steps`; for GD also `stop_step` (the
      step at which the run stopped, −1 if it ran to the end) and
      `last_finite_loss`.

    Saves after the stop time are filled with `inf` (as in Diffrax), so a stopped
    or failed run is never mistaken for a finished one: check `result`.
    Under `jax.vmap` every field gains a leading batch axis.

    `traj[i]` is the model at save i; `len(traj)` is S.
    """

    ts: Float[Array, "*batch saves"]
    models: PyTree
    loss: Float[Array, "*batch saves"]
    final: PyTree
    final_loss: Float[Array, "*batch"]
    stop_time: Float[Array, "*batch"]
    result: RESULTS
    stats: dict

    def __getitem__(self, i):
        return jax.tree.map(lambda x: x[i], self.models)

    def __len__(self) -> int:
        return self.ts.shape[-1]

    @property
    def successful(self):
        """True where the run ended normally (ran to t1 or hit its stop event)."""
        ok = (self.result == RESULTS.successful) | (
            self.result == RESULTS.event_occurred
        )
        return ok

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
