import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._trajectory import Trajectory


def _flat(model):
    return ravel_pytree(eqx.filter(model, eqx.is_inexact_array))[0]


def _metric(metric, inputs, loss, invariant):
    if callable(metric):
        return metric
    if metric == "params":
        return lambda a, b: jnp.linalg.norm(_flat(a) - _flat(b))
    if metric == "predictor":
        if inputs is None:
            raise ValueError("`metric='predictor'` needs `inputs`.")
        return lambda a, b: jnp.linalg.norm(jax.vmap(a)(inputs) - jax.vmap(b)(inputs))
    if metric == "loss":
        if loss is None:
            raise ValueError("`metric='loss'` needs `loss`.")
        return lambda a, b: jnp.abs(loss(a) - loss(b))
    if metric == "invariant":
        if invariant is None:
            raise ValueError("`metric='invariant'` needs `invariant` (model -> array).")
        return lambda a, b: jnp.linalg.norm(
            ravel_pytree(invariant(a))[0] - ravel_pytree(invariant(b))[0]
        )
    raise ValueError(
        "`metric` must be 'params', 'predictor', 'loss', 'invariant' or a callable "
        f"(model_a, model_b) -> scalar; got {metric!r}."
    )


def compare(
    a: Trajectory,
    b: Trajectory,
    *,
    metric="params",
    ts=None,
    inputs=None,
    loss=None,
    invariant=None,
):
    r"""Compare two trajectories on the shared clock.

    The comparison times are `ts`, or those of whichever trajectory has no dense
    interpolation (a GD run's tₖ = kη), or `a.ts`. A flow solved with `dense=True`
    is evaluated anywhere by Diffrax's interpolation; any other trajectory must
    have a save at each time (ValueError otherwise — GD has no state between
    steps).

    **Metrics:** "params" ‖θ_a − θ_b‖₂; "predictor" ‖f_a(X) − f_b(X)‖ on `inputs`;
    "loss" |L_a − L_b| with `loss`; "invariant" ‖Q_a − Q_b‖ with `invariant`; or a
    callable (model_a, model_b) → scalar.

    **Returns:** (times, values) as arrays.
    """
    if not isinstance(a, Trajectory) or not isinstance(b, Trajectory):
        raise TypeError("`a` and `b` must be flowgap Trajectories.")
    structure_a = jax.tree.structure(eqx.filter(a[0], eqx.is_inexact_array))
    structure_b = jax.tree.structure(eqx.filter(b[0], eqx.is_inexact_array))
    if structure_a != structure_b or any(
        x.shape != y.shape for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0]))
    ):
        raise ValueError("`a` and `b` are trajectories of different model structures.")
    fn = _metric(metric, inputs, loss, invariant)
    if ts is None:
        ts = b.ts if a.interpolation is not None and b.interpolation is None else a.ts
    ts = np.asarray(ts)
    stop = min(float(a.stop_time), float(b.stop_time))
    ts = ts[ts <= stop * (1 + 1e-12)]
    models_a, models_b = a.at(ts), b.at(ts)
    values = jax.vmap(fn)(models_a, models_b)
    return jnp.asarray(ts), values
