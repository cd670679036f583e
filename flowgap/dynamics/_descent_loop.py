r"""The loop of a jitted gradient-descent run: its guarded and unguarded steps,
the chunks between saves, checkpointed blocks of steps that cost nothing once
every run has stopped, the evaluation counters, and a Diffrax progress meter fed
from inside the program. `gradient_descent` (in `_descent.py`) validates the
arguments and assembles the `Trajectory`."""

import functools
import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._rates import precondition
from ._results import RESULTS
from ._stopping import any_nonfinite


def any_run(pred):
    """`pred`, or under `jax.vmap` whether it holds for any run of the batch, so
    that `lax.cond` on it stays a real branch (a batched predicate would turn the
    cond into a select that always runs both branches). Diffrax's loops use the
    same device."""
    return eqxi.unvmap_any(pred)


class Meter(eqx.Module):
    """A Diffrax progress meter on the step clock: step k of K is progress k/K."""

    meter: diffrax.AbstractProgressMeter
    total: int = eqx.field(static=True)

    def init(self):
        return self.meter.init()

    def step(self, state, position):
        return self.meter.step(state, position / self.total)

    def close(self, state) -> None:
        self.meter.close(state)


# Below this many steps a loop is one plain scan: its reverse-mode residuals are
# bounded by this constant anyway, and short loops stay exactly as before.
_CHECKPOINT_MIN_STEPS = 64


def scan_steps(
    run,
    carry,
    first,
    length: int,
    *,
    running=None,
    meter: Meter | None = None,
    meter_state=None,
):
    r"""`length` steps from step `first`, taken block by block by `run(carry,
    start, size)` (which takes `size` steps from step `start`; see `each_step`),
    so that reverse-mode memory grows like O(√length), not O(length), and a
    stopped run stops costing compute. Returns (carry, meter_state).

    The steps run in B = ⌈√length⌉ blocks of B steps (plus one shorter block), an
    outer scan over blocks whose body is `jax.checkpoint`-ed: differentiating
    stores only the carry at each block start (√length states) and, while one
    block is being differentiated, that block's B per-step residuals. The price
    is one extra forward pass in the backward sweep (≈ 4/3 of plain reverse-mode
    cost for a gradient-dominated step). A forward-only run (no derivative, or
    `jax.jvp`/`jax.jacfwd`) executes the same steps in the same order with no
    recomputation: `jax.checkpoint` is a no-op outside reverse mode. Fewer than
    64 steps are one block, a plain scan.

    **Arguments:**

    - `running`: carry → bool. A block whose start carry fails it, for every run
      of a `jax.vmap` batch, is skipped by `lax.cond` (a real branch: see
      `any_run`); its carry passes through unchanged. So a stopped run costs at
      most the rest of the block it stopped in, then a predicate per block. Both
      `lax.cond` and `jax.checkpoint` are reverse-differentiable, and a block
      that runs computes exactly what it would without the cond.
    - `meter`, `meter_state`: a progress meter, stepped after every block, run
      or skipped, at the step reached.
    """
    block = functools.partial(_block, run, running, meter)
    both = (carry, meter_state)
    if length < _CHECKPOINT_MIN_STEPS:
        return block(length, both, first)
    size = math.isqrt(length - 1) + 1
    count, rest = divmod(length, size)
    checkpoint = functools.partial(jax.checkpoint, prevent_cse=False)
    full = checkpoint(lambda both, start: (block(size, both, start), None))
    both = lax.scan(full, both, first + size * jnp.arange(count))[0]
    if rest:
        both = checkpoint(lambda both: block(rest, both, first + count * size))(both)
    return both


def each_step(body):
    """A block `run` for `scan_steps` from a step `body(carry, k) → (carry, _)`."""
    return lambda carry, start, size: lax.scan(body, carry, start + jnp.arange(size))[0]


def _block(run, running, meter, size: int, both, start):
    """One block of `size` steps from step `start`, then the meter."""
    carry, meter_state = both
    if size and running is None:
        carry = run(carry, start, size)
    elif size:
        carry = lax.cond(
            any_run(running(carry)), lambda c: run(c, start, size), lambda c: c, carry
        )
    if meter is not None:
        meter_state = meter.step(meter_state, start + size)
    return carry, meter_state


class _Counts(eqx.Module):
    """Evaluations executed so far: of ∇L (with L alongside), and of L alone."""

    grads: Int[Array, ""]
    losses: Int[Array, ""]

    def add(self, *, grads=0, losses=0) -> "_Counts":
        return _Counts(self.grads + grads, self.losses + losses)


class DescentState(eqx.Module):
    """θ and the optimizer's state at step `step`; `result`, `stop_step`,
    `last_finite_loss` and `stop_loss` as in `Trajectory.stats`."""

    params: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    result: RESULTS
    stop_step: Int[Array, ""]
    last_finite_loss: Float[Array, ""]
    stop_loss: Float[Array, ""]
    counts: _Counts

    @property
    def active(self) -> Bool[Array, ""]:
        return self.result == RESULTS.successful


class _Fast(eqx.Module):
    """The carry of an unguarded chunk from block to block: `ok` while every
    block so far ended at finite θ with a finite L(θ) = `value` ≤ `max_loss`."""

    params: PyTree
    opt_state: PyTree
    ok: Bool[Array, ""]
    value: Float[Array, ""]
    counts: _Counts


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


class DescentProgram(eqx.Module):
    """One compiled GD run: its step, its two kinds of chunk between saves, and
    the segments of the save schedule, for traced `lr`, data and settings."""

    value_fn: Callable
    static: PyTree
    opt: optax.GradientTransformation
    rates: PyTree
    projection: Callable | None
    stop_when: Callable | None
    max_loss: Float[Array, ""] | None
    blocks: tuple | None
    meter: Meter
    # SGD: (params, k) → L_{B_k}, the loss whose gradient moves step k; the saves,
    # the guard and `stop_when` still see the full loss `value_fn` (None: GD).
    step_loss: Callable | None = None

    def step_grad(self, params, step):
        """The gradient that moves step k: ∇L, or ∇L_{B_k} for SGD."""
        if self.step_loss is None:
            return jax.grad(self.value_fn)(params)
        return jax.grad(self.step_loss)(params, step)

    def direction(self, grads, step):
        """P∇L, restricted to block `step mod B` for layer-wise descent."""
        if self.blocks is not None:
            ids, count = self.blocks
            active_block = step % count
            grads = jax.tree.map(
                lambda g, b: jnp.where(b == active_block, g, jnp.zeros_like(g)),
                grads,
                jax.tree.unflatten(jax.tree.structure(grads), list(ids)),
            )
        return precondition(grads, self.rates)

    def update(self, params, opt_state, grads, step):
        """The optimizer's step from θ along P∇L, then `projection`."""
        direction = self.direction(grads, step)
        updates, opt_state = self.opt.update(direction, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if self.projection is not None:
            projected = self.projection(eqx.combine(new_params, self.static))
            new_params = eqx.filter(projected, _trainable_mask(params))
        return new_params, opt_state

    def advance(self, state: DescentState, value, grads) -> DescentState:
        """The guarded step at θ_k, given L(θ_k) and ∇L(θ_k): stop (diverged or
        converged) at k, or move to θ_{k+1}."""
        active = state.active
        bad = ~jnp.isfinite(value)
        if self.max_loss is not None:
            bad = bad | (value > self.max_loss)
        converged = (
            jnp.array(False) if self.stop_when is None else self.stop_when(value, grads)
        )
        params, opt_state = self.update(
            state.params, state.opt_state, grads, state.step
        )
        move = active & ~bad & ~converged
        result = RESULTS.where(active & bad, RESULTS.diverged, state.result)
        result = RESULTS.where(
            active & ~bad & converged, RESULTS.event_occurred, result
        )
        return DescentState(
            params=_tree_where(move, params, state.params),
            opt_state=_tree_where(move, opt_state, state.opt_state),
            step=state.step + move.astype(state.step.dtype),
            result=result,
            stop_step=jnp.where(active & ~move, state.step, state.stop_step),
            last_finite_loss=jnp.where(active & ~bad, value, state.last_finite_loss),
            stop_loss=jnp.where(active & ~move, value, state.stop_loss),
            counts=state.counts.add(grads=1),
        )

    def guarded(self, state: DescentState):
        """(state after one guarded step, L(θ) before it). Skipped, with L = inf,
        once the run has stopped (under vmap: once every run has)."""

        def step(state):
            if self.step_loss is None:
                value, grads = jax.value_and_grad(self.value_fn)(state.params)
            else:
                # the guard's L is the full loss, one evaluation besides the step's
                # minibatch gradient
                value = self.value_fn(state.params)
                grads = self.step_grad(state.params, state.step)
                state = eqx.tree_at(
                    lambda s: s.counts, state, state.counts.add(losses=1)
                )
            value = value.astype(state.stop_loss.dtype)
            return self.advance(state, value, grads), value

        def skip(state):
            return state, jnp.full_like(state.stop_loss, jnp.inf)

        return lax.cond(any_run(state.active), step, skip, state)

    def guarded_chunk(self, state: DescentState, meter_state, position, stride: int):
        """`stride` guarded steps from step `position`; L at the chunk's start."""
        state, value = self.guarded(state)
        state, meter_state = scan_steps(
            each_step(lambda s, _: (self.guarded(s)[0], None)),
            state,
            position + 1,
            stride - 1,
            running=lambda s: s.active,
            meter=self.meter,
            meter_state=meter_state,
        )
        return state, meter_state, value

    def plain_step(self, carry, step):
        params, opt_state = carry
        grads = self.step_grad(params, step)
        return self.update(params, opt_state, grads, step), None

    def fast_block(self, fast: _Fast, start, size: int) -> _Fast:
        """`size` unguarded steps from step `start`, then the divergence test
        (one value of L)."""
        carry = (fast.params, fast.opt_state)
        steps = start + jnp.arange(size)
        # (a lambda: lax hashes its functions, and this module holds tracers)
        params, opt_state = lax.scan(lambda c, k: self.plain_step(c, k), carry, steps)[
            0
        ]
        value = self.value_fn(params).astype(fast.value.dtype)
        ok = fast.ok & ~any_nonfinite(params) & jnp.isfinite(value)
        if self.max_loss is not None:
            ok = ok & (value <= self.max_loss)
        counts = fast.counts.add(grads=size, losses=1)
        return _Fast(params, opt_state, ok, value, counts)

    def fast_chunk(self, state: DescentState, meter_state, position, stride: int):
        """`stride` unguarded steps (gradient only, as a hand-written loop), checked
        after every block of `scan_steps` (≈ √stride steps). Once a block ends
        bad (non-finite θ or L, or L above `max_loss`), the chunk's later blocks
        are skipped and it is replayed with the per-step guard from its start,
        which finds the exact step; the replay runs only then (see `any_run`)."""

        def start_value(state):
            value = self.value_fn(state.params).astype(state.stop_loss.dtype)
            return value, state.counts.add(losses=1)

        def no_value(state):
            return jnp.full_like(state.stop_loss, jnp.inf), state.counts

        value, counts = lax.cond(any_run(state.active), start_value, no_value, state)
        fast = _Fast(
            state.params, state.opt_state, state.active, state.last_finite_loss, counts
        )
        fast, meter_state = scan_steps(
            lambda f, start, size: self.fast_block(f, start, size),
            fast,
            position,
            stride,
            running=lambda f: f.ok,
            meter=self.meter,
            meter_state=meter_state,
        )
        start = eqx.tree_at(lambda s: s.counts, state, fast.counts)
        done = eqx.tree_at(
            lambda s: (s.params, s.opt_state, s.step, s.last_finite_loss),
            start,
            (fast.params, fast.opt_state, state.step + stride, fast.value),
        )
        keep = state.active & fast.ok

        def replay(start):
            redone = scan_steps(
                each_step(lambda s, _: (self.guarded(s)[0], None)),
                start,
                position,
                stride,
                running=lambda s: s.active,
            )[0]
            # every run of the batch was replayed: each counts the replay
            merged = _tree_where(keep, done, redone)
            return eqx.tree_at(lambda s: s.counts, merged, redone.counts)

        bad = state.active & ~fast.ok
        state = lax.cond(
            any_run(bad), replay, lambda s: _tree_where(keep, done, s), start
        )
        return state, meter_state, value

    def segment(self, carry, offset: int, count: int, stride: int):
        """`count` chunks of `stride` steps from step `offset`, saving (θ, L) at
        each chunk's start."""
        fast = self.stop_when is None and stride > 1
        run_chunk = self.fast_chunk if fast else self.guarded_chunk

        def chunk(carry, index):
            state, meter_state = carry
            position = offset + index * stride
            saved_params = state.params
            state, meter_state, value = run_chunk(state, meter_state, position, stride)
            return (state, meter_state), (saved_params, value)

        if stride > 1:
            # Reverse mode then stores one state per save, not the block starts
            # of every chunk (see `scan_steps`).
            chunk = jax.checkpoint(chunk, prevent_cse=False)
        return lax.scan(chunk, carry, jnp.arange(count))

    def run(self, params, segments):
        """(final state, saves of each segment)."""
        dtype = jnp.result_type(*jax.tree.leaves(params))
        zero = jnp.array(0)
        state = DescentState(
            params=params,
            opt_state=self.opt.init(params),
            step=zero,
            result=RESULTS.successful,
            stop_step=jnp.array(-1),
            last_finite_loss=jnp.array(jnp.nan, dtype),
            stop_loss=jnp.array(jnp.nan, dtype),
            counts=_Counts(zero, zero),
        )
        carry = (state, self.meter.init())
        saves, offset = [], 0
        for count, stride in segments:
            carry, saved = self.segment(carry, offset, count, stride)
            saves.append(saved)
            offset += count * stride
        state, meter_state = carry
        self.meter.close(meter_state)
        return state, saves


def _trainable_mask(params):
    """True at the trainable leaves (those of `params`), False elsewhere."""
    return jax.tree.map(lambda x: x is not None, params, is_leaf=lambda x: x is None)
