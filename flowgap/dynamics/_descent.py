"""Full-batch gradient descent as one jitted, scan-based program."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import is_concrete, positive_int, positive_scalar
from ..models._protocol import class_path, model_method
from ._common import check_loss, scalar_loss, split_model, stacked_model
from ._descent_loop import DescentProgram, DescentState, Meter
from ._flow_options import check_progress_meter
from ._rates import check_rates, restrict_rates
from ._results import RESULTS, DivergenceError
from ._saves import saved_steps, schedule
from ._stability import check_stability as stability_check
from ._stopping import check_stop_condition
from ._trajectory import Trajectory, fill_after_stop


def _make_optimizer(optimizer, lr) -> optax.GradientTransformation:
    if optimizer is None:
        return optax.sgd(lr)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    return optimizer(lr)


def _check_optimizer(optimizer):
    if optimizer is None or isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if callable(optimizer):
        return optimizer
    raise TypeError(
        "`optimizer` must be None, an optax optimizer factory taking the learning "
        "rate (e.g. `optax.adam`), or an optax GradientTransformation; got "
        f"{type(optimizer).__name__}."
    )


class _Config(eqx.Module):
    """The settings that shape the program (static under `filter_jit`)."""

    segments: tuple = eqx.field(static=True)
    optimizer: object
    projection: Callable | None
    meter: Meter
    blocks: tuple | None = eqx.field(static=True)


@eqx.filter_jit
def _descend(
    loss,
    params,
    static,
    lr,
    rates,
    max_loss,
    stop_when,
    config: _Config,
    step_loss=None,
):
    value_fn = scalar_loss(loss, static)
    if step_loss is not None:
        step_loss = step_loss.bind(static)
    program = DescentProgram(
        value_fn=value_fn,
        static=static,
        opt=_make_optimizer(config.optimizer, lr),
        rates=rates,
        projection=config.projection,
        stop_when=stop_when,
        max_loss=max_loss,
        blocks=config.blocks,
        meter=config.meter,
        step_loss=step_loss,
    )
    state, saves = program.run(params, config.segments)
    final_value = value_fn(state.params)
    return _trajectory(state, saves, final_value, config.segments, lr, static)


def _trajectory(
    state: DescentState, saves, final_value, segments, lr, static
) -> Trajectory:
    """The saves, the final state (saved at step K) and the counters as a
    `Trajectory`; saves after the stop step are inf."""
    dtype = state.stop_loss.dtype
    last_params = jax.tree.map(lambda x: x[None], state.params)
    saves = [*saves, (last_params, final_value[None])]
    saved_params = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[s[0] for s in saves])
    saved_loss = jnp.concatenate([s[1] for s in saves]).astype(dtype)
    step_numbers = saved_steps(segments)
    steps = jnp.asarray(step_numbers)
    stopped = state.stop_step >= 0
    stop_step = jnp.where(stopped, state.stop_step, int(step_numbers[-1]))
    saved_params, saved_loss = fill_after_stop(
        (saved_params, saved_loss), steps, stop_step, strict=True
    )
    return Trajectory(
        ts=steps.astype(dtype) * lr,
        models=stacked_model(saved_params, static, steps.shape[0]),
        loss=saved_loss,
        final=eqx.combine(state.params, static),
        final_loss=final_value,
        stop_time=stop_step.astype(dtype) * lr,
        result=state.result,
        stats=dict(
            num_steps=state.step,
            num_accepted_steps=state.step,
            num_rejected_steps=jnp.array(0),
            num_grad_evals=state.counts.grads,
            num_loss_evals=state.counts.losses + 1,  # + L(final)
            stop_step=state.stop_step,
            last_finite_loss=state.last_finite_loss,
            stop_loss=state.stop_loss,
        ),
    )


def _layer_blocks(layerwise, model, params, static):
    """Static (block id per trainable leaf, number of blocks), or None."""
    if layerwise is None or layerwise is False:
        return None
    selectors = _default_layers(model) if layerwise is True else layerwise
    try:
        selectors = tuple(selectors)
    except TypeError:
        selectors = ()
    if not selectors or not all(callable(s) for s in selectors):
        raise TypeError(
            "`layerwise` must be None, True, or a sequence of selectors model -> "
            "array(s)."
        )
    leaves, treedef = jax.tree.flatten(params)
    numbered = eqx.combine(
        jax.tree.unflatten(treedef, [_Leaf(i) for i in range(len(leaves))]), static
    )
    owner = [None] * len(leaves)
    for block, select in enumerate(selectors):
        chosen = jax.tree.leaves(
            select(numbered), is_leaf=lambda x: isinstance(x, _Leaf)
        )
        for leaf in chosen:
            if not isinstance(leaf, _Leaf):
                continue
            if owner[leaf.index] is not None:
                raise ValueError(
                    "`layerwise` selectors overlap: a parameter is in two blocks."
                )
            owner[leaf.index] = block
    if any(o is None for o in owner):
        raise ValueError(
            "`layerwise` selectors must cover every trainable array of `model`."
        )
    return tuple(owner), len(selectors)


class _Leaf:
    """Marker standing for trainable leaf `index` while resolving selectors."""

    def __init__(self, index: int):
        self.index = index


def _default_layers(model):
    """The selectors of `model.layer_blocks()` (the model protocol)."""
    layer_blocks = model_method(model, "layer_blocks")
    if layer_blocks is None:
        raise ValueError(
            f"`layerwise=True` takes the layers from the model's `layer_blocks()` "
            f"method, which {class_path(model)} does not define; define it (see "
            "`flowgap.models`' model protocol) or pass `layerwise` as a sequence of "
            "selectors model -> array(s)."
        )
    return layer_blocks()


def _divergence_message(traj: Trajectory, lr) -> str:
    step = int(traj.stats["stop_step"])
    bad = float(traj.stats["stop_loss"])
    why = (
        "became non-finite"
        if not np.isfinite(bad)
        else f"exceeded max_loss ({bad:.6g})"
    )
    return (
        f"gradient descent diverged at step {step} (t = {float(traj.stop_time):.6g}, "
        f"lr = {float(lr):.6g}): the loss {why}; last finite loss "
        f"{float(traj.stats['last_finite_loss']):.6g}. The trajectory up to the "
        "divergence is on `err.trajectory`; try a smaller `lr`."
    )


def gradient_descent(
    loss,
    model,
    *,
    lr,
    steps: int,
    save_every: int = 1,
    save_steps=None,
    optimizer=None,
    rates=None,
    projection=None,
    stop_when=None,
    max_loss=None,
    throw: bool = False,
    progress_meter: diffrax.AbstractProgressMeter | None = None,
    layerwise=None,
    check_stability: bool = False,
    trainable=None,
) -> Trajectory:
    r"""Full-batch gradient descent as one jitted, scan-based program.

    $$\theta_{k+1} = \theta_k - \eta\,P \odot \nabla L(\theta_k),\qquad t_k = k\eta,$$

    the explicit Euler method of the gradient flow dθ/dt = −P∇L with step η
    (docs: theory/one-clock). With an `optimizer`, P∇L is fed to it instead of the plain
    update. Trainable parameters are the floating-point array leaves of `model`
    that `trainable` selects (default: all of them).

    **Arguments:**

    - `loss`: model → scalar, e.g. `problem.loss` (its data are traced).
    - `model`: the initial model (an Equinox module).
    - `lr`: η > 0, traced: a new value never recompiles. It also sets the clock.
    - `steps`: number of steps K (static).
    - `save_every`: save every this many steps (must divide `steps`).
    - `save_steps`: alternatively, the increasing step indices to save (e.g.
      `log_save_steps(steps)`); 0 and `steps` are always saved.
    - `optimizer`: None for plain GD; an optax factory taking the learning rate
      (`optax.adam`, `functools.partial(optax.sgd, momentum=0.9)`), called with the
      traced `lr`; or a ready `optax.GradientTransformation`, used as is (its own
      learning rate applies and `lr` only sets the clock).
    - `rates`: P, a positive scalar or a pytree with the model's structure (see
      `uniform_rates`, `PolarDiagonalNet.rates`). Same `rates` as `gradient_flow`
      means the same preconditioning.
    - `projection`: model → model applied after every step, e.g.
      `PolarDiagonalNet.normalised` for projected (rPGD) polar descent.
    - `stop_when`: a stop condition (`LossBelow(tol)`, `GradNormBelow(tol)`) checked
      before every step; the run then ends with status `event_occurred`.
    - `max_loss`: treat a loss above this as divergence (default: only non-finite).
    - `throw`: raise `DivergenceError` if the run diverges (otherwise the status
      is on the result).
    - `progress_meter`: a Diffrax progress meter, as for `gradient_flow`:
      `diffrax.NoProgressMeter()` (None, the default), `diffrax.TqdmProgressMeter()`
      or `diffrax.TextProgressMeter()`. It runs inside the compiled program, at
      progress k/K, stepped once per block of ≈√(steps between saves) steps and
      at least once per save (so `TqdmProgressMeter(refresh_steps=n)` refreshes
      every n blocks); under `jax.vmap` it shows the whole batch.
    - `layerwise`: layer-wise descent (docs: theory/saddle-to-saddle): step k updates
    only block
      k mod B. True uses the model's layers, from its `layer_blocks()` method (the
      model protocol of `flowgap.models`: `DeepLinear`, `TwoLayer`, `MLP` define
      it; a model that does not raises `ValueError`); or give a sequence of
      selectors model → array(s), as for `eqx.tree_at`, covering every trainable
      array once. The other blocks'
      gradients are zeroed before the optimizer. Its continuous-time counterpart
      is not plain GF: each block moves once per B steps, so to first order in η
      it is the gradient flow at rate 1/B, `gradient_flow(..., rates=1/B)`
      (times 1/B on top of any `rates`), which layer-wise GD tracks to O(η).
    - `check_stability`: before running, compute η·λ_max(P^½∇²L(θ₀)P^½) by
      Lanczos on Hessian-vector products and warn (`StabilityWarning`) when it is
      ≥ 2, where GD is linearly unstable at θ₀ and leaves the flow (needs a
      concrete `lr`; see `flowgap.dynamics.check_stability`).
    - `trainable`: which leaves train, a filter as in `eqx.partition` (a callable
      leaf → bool, or a pytree of bools shaped like `model`); default every
      floating-point array. The rest (frozen layers, integer arrays, functions,
      static fields) is carried along unchanged.

    **Returns:** a `Trajectory` with `ts = k·lr` at the saved steps. A run that
    diverges at step k (L(θ_k) non-finite or above `max_loss`, or θ_{k} not
    finite) keeps all saves up to k, has `result = RESULTS.diverged`,
    `stats["stop_step"] = k`, `stop_time = k·lr`, `stats["last_finite_loss"]`
    (L(θ_{k−1})) and `stats["stop_loss"]` (L(θ_k)); later saves are `inf`.
    `final` is then θ_k, where the run froze. (Without `stop_when`, the steps
    between two saves run gradient-only, as lean as a hand-written loop, and are
    checked after every block of ≈√(steps between saves) steps, by one value of
    L; a chunk that went bad is replayed from its start with the per-step guard,
    which finds k exactly.) With `stop_when`, every step is guarded, and a run
    that converges at step k ends at θ_k with `event_occurred`.

    **Cost.** A stopped run stops costing compute. Once it has stopped (under
    `jax.vmap`: once every run of the batch has), a guarded step is skipped by a
    `lax.cond`, and so are whole blocks of ≈√(steps between saves) steps and
    whole chunks, with one predicate each: the wall time scales with the steps
    taken, plus a predicate per block and per save. An unguarded pass stops at the
    end of the block in which θ or L went bad, and its replay costs the steps from
    the chunk's start to k. The branches are reverse-differentiable, and a run
    that does not stop computes bit for bit what it would without them.

    **Counters** in `stats`, besides `stop_step`, `last_finite_loss`, `stop_loss`:

    - `num_steps` (= `num_accepted_steps`): the steps taken, k for a run stopped
      at step k, K otherwise; `num_rejected_steps` is 0.
    - `num_grad_evals`: the evaluations of ∇L (each with L alongside) executed:
      K for a run that does not stop; k + 1 for one stopped at step k by
      `stop_when`, or diverging on a guarded step (the gradient at θ_k that found
      the stop counts); for a divergence found by an unguarded pass, that pass's
      steps (to the end of its block) plus the replay's (to k + 1). Under
      `jax.vmap` each run counts what the batch executed: a run that stopped is
      still evaluated while another is active.
    - `num_loss_evals`: the evaluations of L alone: L(`final`), and on an
      unguarded chunk (no `stop_when`, more than one step between saves) L at its
      start (the saved value) and after each of its blocks (the check).

    `num_grad_evals + num_loss_evals` is how often `loss` runs forward in the
    run (`check_stability` before it, and the backward sweeps of a derivative
    through it, are not counted).
    """
    return run_descent(
        loss,
        model,
        lr=lr,
        steps=steps,
        save_every=save_every,
        save_steps=save_steps,
        optimizer=optimizer,
        rates=rates,
        projection=projection,
        stop_when=stop_when,
        max_loss=max_loss,
        throw=throw,
        progress_meter=progress_meter,
        layerwise=layerwise,
        check_stability=check_stability,
        trainable=trainable,
    )


def run_descent(
    loss,
    model,
    *,
    lr,
    steps,
    save_every,
    save_steps,
    optimizer,
    rates,
    projection,
    stop_when,
    max_loss,
    throw,
    progress_meter,
    layerwise,
    check_stability,
    trainable,
    step_loss=None,
) -> Trajectory:
    """`gradient_descent`'s checks and run; with `step_loss` (a `BatchLoss`),
    step k moves along ∇L_{B_k} instead of ∇L (`stochastic_descent`)."""
    loss = check_loss(loss)
    lr = positive_scalar("lr", lr)
    steps = positive_int("steps", steps)
    segments = schedule(steps, save_every, save_steps)
    params, static = split_model(model, trainable)
    rates_in, rates = rates, restrict_rates(check_rates(rates, model), params)
    stop_when = check_stop_condition(stop_when)
    max_loss = None if max_loss is None else positive_scalar("max_loss", max_loss)
    if projection is not None and not callable(projection):
        raise TypeError("`projection` must be None or a callable model -> model.")
    meter = Meter(check_progress_meter(progress_meter), steps)
    blocks = _layer_blocks(layerwise, model, params, static)
    if check_stability:
        if not is_concrete(lr):
            raise ValueError(
                "`check_stability=True` needs a concrete `lr` (not traced under "
                "jit/vmap/grad); call `flowgap.dynamics.check_stability` outside."
            )
        stability_check(loss, model, lr=lr, rates=rates_in, trainable=trainable)
    config = _Config(segments, _check_optimizer(optimizer), projection, meter, blocks)
    traj = _descend(
        loss, params, static, lr, rates, max_loss, stop_when, config, step_loss
    )
    if throw:
        traj = _throw_if_diverged(traj, lr)
    return traj


def _throw_if_diverged(traj: Trajectory, lr) -> Trajectory:
    diverged = traj.result == RESULTS.diverged
    if is_concrete(traj.loss) and jnp.ndim(traj.stop_time) == 0:
        if bool(diverged):
            raise DivergenceError(_divergence_message(traj, lr), traj)
        return traj
    checked = eqx.error_if(
        traj.loss,
        diverged,
        "gradient descent diverged (see the trajectory's stats['stop_step']).",
    )
    return eqx.tree_at(lambda t: t.loss, traj, checked)
