import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .._checks import positive_int
from ._sensitivity import differentiable_part


@dataclasses.dataclass
class TuneResult:
    """The record of a `tune` run.

    **Fields:**

    - `params`: dict name → the last iterate's value (float).
    - `path`: dict name → values at every iterate, shape (steps + 1,);
      `path[name][0]` is the start.
    - `values`: the objective at every iterate, shape (steps + 1,).
    - `grads`: dict name → the hypergradient ∂objective/∂name at every iterate,
      shape (steps + 1,) (with respect to the value itself, not its logarithm).
    - `best`: dict name → the iterate with the smallest objective.
    """

    params: dict
    path: dict
    values: np.ndarray
    grads: dict
    best: dict


def tune(
    objective,
    start: dict,
    *,
    steps: int = 50,
    optimizer: optax.GradientTransformation | None = None,
    log_scale: bool = True,
    mode: str = "reverse",
    progress: bool = True,
) -> TuneResult:
    r"""Gradient-based tuning of a few positive hyperparameters.

    Minimises `objective(**params)` over the named scalars in `start` with an
    optax optimizer fed the hypergradient ∂objective/∂params, computed by JAX
    through the whole training run inside `objective` (see `sensitivity`). With
    `log_scale` (default) the optimizer works on z = ln p, so every iterate stays
    positive and a step is a relative change (the natural scale for α, η, ρ):

    $$z_{j+1} = z_j - \text{update}\big(p_j \odot \partial_p F(p_j)\big),
      \qquad p_j = e^{z_j},\quad F = \text{objective}.$$

    One program is compiled (the hyperparameters are traced) and reused at every
    iteration.

    **Arguments:**

    - `objective`: callable taking the names in `start` as keyword arguments and
      returning a scalar (bind anything else with a closure or
      `functools.partial`).
    - `start`: dict name → initial value (positive floats if `log_scale`).
    - `steps`: number of optimizer updates (static).
    - `optimizer`: an optax `GradientTransformation` (default `optax.adam(0.1)`:
      about 10% relative change per step in log scale).
    - `log_scale`: optimise ln p rather than p.
    - `mode`: `"reverse"` (default; one backward pass for all hyperparameters)
      or `"forward"` (one tangent per hyperparameter, `jax.jacfwd`): for one or
      two hyperparameters through a long run, forward mode stores no residuals
      and compiles a much smaller program. Both give the same hypergradient to
      round-off.
    - `progress`: tqdm bar showing the objective.

    **Returns:** a `TuneResult` with the path of every iterate. A non-finite
    objective or hypergradient stops the run with a `FloatingPointError` naming
    the iteration and the hyperparameters there.
    """
    if not callable(objective):
        raise TypeError(
            f"`objective` must be callable, got {type(objective).__name__}."
        )
    if not isinstance(start, dict) or not start:
        raise TypeError("`start` must be a non-empty dict name -> initial value.")
    steps = positive_int("steps", steps)
    if mode not in ("reverse", "forward"):
        raise ValueError(f"`mode` must be 'reverse' or 'forward', got {mode!r}.")
    point = _starting_point(start, log_scale)
    optimizer = optax.adam(0.1) if optimizer is None else optimizer
    evaluate, update = _programs(objective, optimizer, log_scale, mode)
    z = {k: jnp.log(v) if log_scale else v for k, v in point.items()}
    record = _iterate(evaluate, update, z, optimizer.init(z), steps, progress)
    return _result(record, tuple(point))


def _starting_point(start: dict, log_scale: bool) -> dict:
    """`start` as float scalar arrays; a ValueError naming an entry that is not a
    float scalar, or not positive with `log_scale`."""
    point = {}
    for name, value in start.items():
        value, static = differentiable_part(name, value)
        if static is not None or jnp.ndim(value) != 0:
            raise ValueError(f"`start[{name!r}]` must be a scalar, got {value!r}.")
        if log_scale and not float(value) > 0:
            raise ValueError(
                f"`start[{name!r}]` must be > 0 with `log_scale=True`, got "
                f"{float(value)!r}."
            )
        point[name] = value
    return point


def _programs(objective, optimizer, log_scale: bool, mode: str):
    """The two compiled steps of an iteration: `evaluate(z)` → (params, objective,
    hypergradient, the gradient the optimizer sees in z), and
    `update(z, chain, state)` → (next z, next optimizer state)."""
    to_value = (lambda z: jnp.exp(z)) if log_scale else (lambda z: z)

    @jax.jit
    def evaluate(z):
        params = jax.tree.map(to_value, z)
        value, grads = _value_and_grad(objective, mode)(params)
        chain = jax.tree.map(lambda g, p: g * p, grads, params) if log_scale else grads
        return params, value, grads, chain

    @jax.jit
    def update(z, chain, state):
        updates, state = optimizer.update(chain, state, z)
        return optax.apply_updates(z, updates), state

    return evaluate, update


def _value_and_grad(objective, mode: str):
    """params → (objective(**params), its gradient dict) in `mode`."""
    if mode == "reverse":
        return jax.value_and_grad(lambda p: objective(**p))

    def both(params):
        value = objective(**params)
        return value, value

    def forward(params):
        grads, value = jax.jacfwd(both, has_aux=True)(params)
        return value, grads

    return forward


def _iterate(evaluate, update, z, state, steps: int, progress: bool) -> list:
    """(params, objective, hypergradient) at the start and after each of `steps`
    updates; a non-finite one stops the run before the next update."""
    record = []
    bar = tqdm(range(steps + 1), desc="tune", disable=not progress, leave=False)
    for j in bar:
        params, value, grads, chain = evaluate(z)
        record.append((params, value, grads))
        _check_finite(j, params, value, grads)
        bar.set_postfix(objective=f"{float(value):.4g}")
        if j < steps:
            z, state = update(z, chain, state)
    return record


def _result(record: list, names: tuple) -> TuneResult:
    """The `TuneResult` of a run's record, as host floats."""
    values = np.array([float(r[1]) for r in record])
    path = {k: np.array([float(r[0][k]) for r in record]) for k in names}
    grads = {k: np.array([float(r[2][k]) for r in record]) for k in names}
    best = int(np.argmin(values))
    return TuneResult(
        params={k: float(path[k][-1]) for k in names},
        path=path,
        values=values,
        grads=grads,
        best={k: float(path[k][best]) for k in names},
    )


def _check_finite(iteration, params, value, grads):
    finite = np.isfinite(float(value)) and all(
        np.isfinite(float(g)) for g in jax.tree.leaves(grads)
    )
    if not finite:
        where = ", ".join(f"{k} = {float(v):.6g}" for k, v in params.items())
        raise FloatingPointError(
            f"`tune`: the objective or its hypergradient is not finite at iteration "
            f"{iteration} ({where}); lower the optimizer's learning rate or start "
            "elsewhere."
        )
