import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._trajectory import Trajectory


def trainable_part(model, trainable=None):
    """The trainable floating-point arrays of `model` (None elsewhere): the leaves
    selected by `trainable` (a filter as in `eqx.partition`; default every
    floating-point array) that are floating-point arrays. Integer arrays,
    functions and static fields are never parameters."""
    if trainable is not None:
        model = eqx.filter(model, trainable)
    return eqx.filter(model, eqx.is_inexact_array)


def _layout(model, trainable):
    leaves = jax.tree_util.tree_leaves_with_path(trainable_part(model, trainable))
    return [(jax.tree_util.keystr(path) or "(root)", x.shape) for path, x in leaves]


def check_same_parameters(a, b, *, names=("a", "b"), trainable=None):
    """ValueError naming the arguments when models `a` and `b` do not have the same
    trainable arrays (same paths, same shapes); only those are compared, so
    non-array fields (functions, static settings) may differ."""
    layout_a, layout_b = _layout(a, trainable), _layout(b, trainable)
    if layout_a == layout_b:
        return
    first, second = names
    for (path_a, shape_a), (path_b, shape_b) in zip(layout_a, layout_b):
        if (path_a, shape_a) != (path_b, shape_b):
            raise ValueError(
                f"`{first}` and `{second}` have different parameters: `{first}` has "
                f"{path_a} of shape {shape_a} where `{second}` has {path_b} of shape "
                f"{shape_b}."
            )
    raise ValueError(
        f"`{first}` and `{second}` have different parameters: {len(layout_a)} "
        f"trainable arrays in `{first}`, {len(layout_b)} in `{second}`."
    )


def _flat(model, trainable):
    return ravel_pytree(trainable_part(model, trainable))[0]


def _metric(metric, inputs, loss, invariant, trainable):
    if callable(metric):
        return metric
    if metric == "params":
        return lambda a, b: jnp.linalg.norm(_flat(a, trainable) - _flat(b, trainable))
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
    trainable=None,
):
    r"""Compare two trajectories on the shared clock.

    The comparison times are `ts`, or those of whichever trajectory has no dense
    interpolation (a GD run's tₖ = kη), or `a.ts`. A flow solved with `dense=True`
    is evaluated anywhere by Diffrax's interpolation; any other trajectory must
    have a save at each time (ValueError otherwise — GD has no state between
    steps).

    **Metrics:** "params" ‖θ_a − θ_b‖₂ over the trainable arrays; "predictor"
    ‖f_a(X) − f_b(X)‖ on `inputs`; "loss" |L_a − L_b| with `loss`; "invariant"
    ‖Q_a − Q_b‖ with `invariant`; or a callable (model_a, model_b) → scalar.

    **Arguments:** `a`, `b` (Trajectories of models with the same trainable
    arrays), `metric` and its data as above, `ts`, and `trainable` (the filter the
    runs were trained with, as in `eqx.partition`; default every floating-point
    array — frozen arrays equal in both runs add nothing to "params" anyway).

    **Returns:** (times, values) as arrays.
    """
    if not isinstance(a, Trajectory) or not isinstance(b, Trajectory):
        raise TypeError("`a` and `b` must be flowgap Trajectories.")
    check_same_parameters(a[0], b[0], trainable=trainable)
    fn = _metric(metric, inputs, loss, invariant, trainable)
    if ts is None:
        ts = b.ts if a.interpolation is not None and b.interpolation is None else a.ts
    ts = np.asarray(ts)
    stop = min(float(a.stop_time), float(b.stop_time))
    ts = ts[ts <= stop * (1 + 1e-12)]
    models_a, models_b = a.at(ts), b.at(ts)
    # filter_vmap: the time axis is on array leaves only (functions and static
    # fields of the models are shared by all times)
    values = eqx.filter_vmap(fn)(models_a, models_b)
    return jnp.asarray(ts), values
