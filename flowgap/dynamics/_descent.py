import functools
import math

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, Int, PyTree

from .._checks import is_concrete, positive_int, positive_scalar
from . import _progress
from ._common import check_loss, scalar_loss, split_model, stacked_model
from ._rates import check_rates, precondition
from ._results import RESULTS, DivergenceError
from ._saves import saved_steps, schedule
from ._stability import check_stability as stability_check
from ._stopping import any_nonfinite, check_stop_condition
from ._trajectory import Trajectory, fill_after_stop


class _State(eqx.Module):
    params: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    result: RESULTS
    stop_step: Int[Array, ""]
    last_finite_loss: Float[Array, ""]
    stop_loss: Float[Array, ""]


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


def _any_run(pred):
    """`pred`, or under `jax.vmap` whether it holds for any run of the batch, so
    that `lax.cond` on it stays a real branch (a batched predicate would turn the
    cond into a select that always runs both branches). Diffrax's loops use the
    same device."""
    return eqxi.unvmap_any(pred)


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


# Below this many steps a loop is one plain scan: its reverse-mode residuals are
# bounded by this constant anyway, and short loops stay exactly as before.
_CHECKPOINT_MIN_STEPS = 64


def scan_steps(body, carry, first, length: int):
    r"""`length` steps `carry = body(carry, k)[0]` for k = first, first + 1, …,
    as a scan whose reverse-mode memory grows like O(√length), not O(length).

    The steps run in B = ⌈√length⌉ blocks of B steps (plus one shorter block), an
    outer scan over blocks whose body is `jax.checkpoint`-ed: differentiating
    stores only the carry at each block start (√length states) and, while one
    block is being differentiated, that block's B per-step residuals. The price
    is one extra forward pass in the backward sweep (≈ 4/3 of plain reverse-mode
    cost for a gradient-dominated step). A forward-only run (no derivative, or
    `jax.jvp`/`jax.jacfwd`) executes the same steps in the same order with no
    recomputation: `jax.checkpoint` is a no-op outside reverse mode.
    """
    if length < _CHECKPOINT_MIN_STEPS:
        return lax.scan(body, carry, first + jnp.arange(length))[0]
    block = math.isqrt(length - 1) + 1
    count, rest = divmod(length, block)

    def run(carry, start, size):
        return lax.scan(body, carry, start + jnp.arange(size))[0]

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def full_block(carry, start):
        return run(carry, start, block), None

    carry = lax.scan(full_block, carry, first + block * jnp.arange(count))[0]
    if rest:
        tail = jax.checkpoint(lambda c: run(c, first + count * block, rest))
        carry = tail(carry)
    return carry


@eqx.filter_jit
def _descend(loss, params, static, lr, rates, max_loss, stop_when, config):
    segments, optimizer, projection, progress, blocks = config

    def direction(grads, step):
        """P∇L, restricted to block `step mod B` for layer-wise descent."""
        if blocks is not None:
            ids, count = blocks
            active_block = step % count
            grads = jax.tree.map(
                lambda g, b: jnp.where(b == active_block, g, jnp.zeros_like(g)),
                grads,
                jax.tree.unflatten(jax.tree.structure(grads), list(ids)),
            )
        return precondition(grads, rates)

    value_fn = scalar_loss(loss, static)
    value_and_grad = jax.value_and_grad(value_fn)
    opt = _make_optimizer(optimizer, lr)

    def advance(state: _State, value, grads) -> _State:
        active = state.result == RESULTS.successful
        bad = ~jnp.isfinite(value)
        if max_loss is not None:
            bad = bad | (value > max_loss)
        converged = jnp.array(False) if stop_when is None else stop_when(value, grads)
        updates, opt_state = opt.update(
            direction(grads, state.step), state.opt_state, state.params
        )
        new_params = optax.apply_updates(state.params, updates)
        if projection is not None:
            new_params = eqx.filter(
                projection(eqx.combine(new_params, static)), eqx.is_inexact_array
            )
        move = active & ~bad & ~converged
        result = RESULTS.where(active & bad, RESULTS.diverged, state.result)
        result = RESULTS.where(
            active & ~bad & converged, RESULTS.event_occurred, result
        )
        return _State(
            params=_tree_where(move, new_params, state.params),
            opt_state=_tree_where(move, opt_state, state.opt_state),
            step=state.step + move.astype(state.step.dtype),
            result=result,
            stop_step=jnp.where(active & ~move, state.step, state.stop_step),
            last_finite_loss=jnp.where(active & ~bad, value, state.last_finite_loss),
            stop_loss=jnp.where(active & ~move, value, state.stop_loss),
        )

    def one_step(state, _):
        return advance(state, *value_and_grad(state.params)), None

    def plain_step(carry, step):
        params, opt_state = carry
        grads = jax.grad(value_fn)(params)
        updates, opt_state = opt.update(direction(grads, step), opt_state, params)
        params = optax.apply_updates(params, updates)
        if projection is not None:
            params = eqx.filter(
                projection(eqx.combine(params, static)), eqx.is_inexact_array
            )
        return (params, opt_state), None

    def fast_chunk(state: _State, stride: int):
        """`stride` unguarded steps (gradient only, as a hand-written loop), checked
        once afterwards. If the chunk went bad (non-finite parameters, or a loss
        above `max_loss` at its end), it is replayed with the per-step guard from
        its start, which finds the exact step; the replay runs only then (see
        `_any_run`)."""
        value = value_fn(state.params)
        params, opt_state = scan_steps(
            plain_step, (state.params, state.opt_state), state.step, stride
        )
        end_value = value_fn(params)
        bad = any_nonfinite(params) | ~jnp.isfinite(end_value)
        if max_loss is not None:
            bad = bad | (end_value > max_loss)
        active = state.result == RESULTS.successful
        fast = _State(
            params=params,
            opt_state=opt_state,
            step=state.step + stride,
            result=state.result,
            stop_step=state.stop_step,
            last_finite_loss=end_value,
            stop_loss=state.stop_loss,
        )

        def replay(start):
            return scan_steps(one_step, start, start.step, stride)

        redo = (active & bad) | ~active
        state = lax.cond(
            _any_run(active & bad), replay, lambda s: _tree_where(redo, s, fast), state
        )
        return state, value

    def segment(state, count, stride):
        report_every = max(1, count // 200)

        def chunk(state, index):
            if stop_when is None and stride > 1:
                start = state.params
                state, value = fast_chunk(state, stride)
                saved = (start, value)
            else:
                value, grads = value_and_grad(state.params)
                saved = (state.params, value)
                state = advance(state, value, grads)
                if stride > 1:
                    state = lax.cond(
                        state.result == RESULTS.successful,
                        lambda s: scan_steps(one_step, s, s.step, stride - 1),
                        lambda s: s,
                        state,
                    )
            if progress:
                lax.cond(
                    index % report_every == 0,
                    lambda: _progress.report(state.step),
                    lambda: None,
                )
            return state, saved

        if stride > 1:
            # Reverse mode then stores one state per save, not the block starts
            # of every chunk (see `scan_steps`).
            chunk = jax.checkpoint(chunk, prevent_cse=False)
        return lax.scan(chunk, state, jnp.arange(count))

    dtype = jnp.result_type(*jax.tree.leaves(params))
    state = _State(
        params=params,
        opt_state=opt.init(params),
        step=jnp.array(0),
        result=RESULTS.successful,
        stop_step=jnp.array(-1),
        last_finite_loss=jnp.array(jnp.nan, dtype),
        stop_loss=jnp.array(jnp.nan, dtype),
    )
    saves = []
    for count, stride in segments:
        state, saved = segment(state, count, stride)
        saves.append(saved)
    final_value = value_fn(state.params)
    last_params = jax.tree.map(lambda x: x[None], state.params)
    saves.append((last_params, final_value[None]))
    saved_params = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[s[0] for s in saves])
    saved_loss = jnp.concatenate([s[1] for s in saves]).astype(dtype)

    step_numbers = saved_steps(segments)
    total = int(step_numbers[-1])
    steps = jnp.asarray(step_numbers)
    stopped = state.stop_step >= 0
    stop_step = jnp.where(stopped, state.stop_step, total)
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
            num_grad_evals=state.step,
            stop_step=state.stop_step,
            last_finite_loss=state.last_finite_loss,
            stop_loss=state.stop_loss,
        ),
    )


def _layer_blocks(layerwise, model, params):
    """Static (block id per trainable leaf, number of blocks), or None."""
    if layerwise is None or layerwise is False:
        return None
    if layerwise is True:
        selectors = _default_layers(model)
    else:
        selectors = tuple(layerwise)
        if not selectors or not all(callable(s) for s in selectors):
            raise TypeError(
                "`layerwise` must be None, True, or a sequence of selectors model -> "
                "array(s)."
            )
    leaves, treedef = jax.tree.flatten(params)
    numbered = eqx.combine(
        jax.tree.unflatten(treedef, [_Leaf(i) for i in range(len(leaves))]),
        eqx.partition(model, eqx.is_inexact_array)[1],
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
    from ..models import MLP, DeepLinear, TwoLayer

    if isinstance(model, DeepLinear):
        return tuple(lambda m, i=i: m.weights[i] for i in range(len(model.weights)))
    if isinstance(model, TwoLayer):
        return (lambda m: m.w1, lambda m: m.w2)
    if isinstance(model, MLP):
        return tuple(lambda m, i=i: m.layers[i] for i in range(len(model.layers)))
    raise ValueError(
        f"`layerwise=True` knows the layers of DeepLinear, TwoLayer and MLP, not "
        f"{type(model).__name__}; pass a sequence of selectors."
    )


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
    progress: bool = False,
    layerwise=None,
    check_stability: bool = False,
) -> Trajectory:
    r"""Full-batch gradient descent as one jitted, scan-based program.

    $$\theta_{k+1} = \theta_k - \eta\,P \odot \nabla L(\theta_k),\qquad t_k = k\eta,$$

    the explicit Euler method of the gradient flow dθ/dt = −P∇L with step η
    (science.md §1). With an `optimizer`, P∇L is fed to it instead of the plain
    update. Trainable parameters are the floating-point array leaves of `model`.

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
    - `progress`: show a tqdm bar.
    - `layerwise`: layer-wise descent (science.md §6): step k updates only block
      k mod B. True uses the model's layers (`DeepLinear.weights`, `TwoLayer`'s
      w1 and w2, `MLP.layers`); or give a sequence of selectors model → array(s),
      as for `eqx.tree_at`, covering every trainable array once. The other blocks'
      gradients are zeroed before the optimizer. Its continuous-time counterpart
      is not plain GF: each block moves once per B steps, so to first order in η
      it is the gradient flow at rate 1/B, `gradient_flow(..., rates=1/B)`
      (times 1/B on top of any `rates`), which layer-wise GD tracks to O(η).
    - `check_stability`: before running, compute η·λ_max(P^½∇²L(θ₀)P^½) by
      Lanczos on Hessian-vector products and warn (`StabilityWarning`) when it is
      ≥ 2, where GD is linearly unstable at θ₀ and leaves the flow (needs a
      concrete `lr`; see `flowgap.dynamics.check_stability`).

    **Returns:** a `Trajectory` with `ts = k·lr` at the saved steps. A run that
    diverges at step k (L(θ_k) non-finite or above `max_loss`, or θ_{k} not
    finite) keeps all saves up to k, has `result = RESULTS.diverged`,
    `stats["stop_step"] = k`, `stop_time = k·lr`, `stats["last_finite_loss"]`
    (L(θ_{k−1})) and `stats["stop_loss"]` (L(θ_k)); later saves are `inf`.
    `final` is then θ_k, where the run froze. (Without `stop_when`, the steps
    between two saves run gradient-only, as lean as a hand-written loop, and the
    chunk is checked once; a chunk that went bad is replayed from its start with
    the per-step guard, which finds k exactly.) With `stop_when`, every step is
    guarded, and a run that converges at step k ends at θ_k with `event_occurred`.
    """
    loss = check_loss(loss)
    lr = positive_scalar("lr", lr)
    steps = positive_int("steps", steps)
    segments = schedule(steps, save_every, save_steps)
    params, static = split_model(model)
    rates_in, rates = rates, check_rates(rates, model)
    stop_when = check_stop_condition(stop_when)
    max_loss = None if max_loss is None else positive_scalar("max_loss", max_loss)
    if projection is not None and not callable(projection):
        raise TypeError("`projection` must be None or a callable model -> model.")
    blocks = _layer_blocks(layerwise, model, params)
    if check_stability:
        if not is_concrete(lr):
            raise ValueError(
                "`check_stability=True` needs a concrete `lr` (not traced under "
                "jit/vmap/grad); call `flowgap.dynamics.check_stability` outside."
            )
        stability_check(loss, model, lr=lr, rates=rates_in)
    config = (segments, _check_optimizer(optimizer), projection, bool(progress), blocks)
    bar = _progress.open_bar(steps, "gradient descent") if progress else None
    try:
        traj = _descend(loss, params, static, lr, rates, max_loss, stop_when, config)
    finally:
        if bar is not None:
            _progress.close_bar(bar)
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
