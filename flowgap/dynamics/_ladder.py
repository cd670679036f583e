"""Learning-rate ladders on one clock t = kη: gradient descent at several rates
to one horizon T, every rate in one compiled program (`ladder_descent`), each
run frozen after its own K = T/η steps (`MovesFor`)."""

import math
from collections.abc import Sequence
from functools import reduce

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ._descent import gradient_descent


def ladder_steps(t1: float | int, lrs: Sequence[float], saves: int = 1) -> dict:
    """lr → its step count t1/lr, for every rate of the ladder.

    Raises a `ValueError` naming `lrs` when t1 is not a whole number of steps
    of some rate, or naming `saves` when it does not divide that number (so GD's
    saves fall on the flow's save times).
    """
    steps = {}
    for lr in lrs:
        count = t1 / lr
        if abs(count - round(count)) > 1e-9 * count or round(count) < 1:
            raise ValueError(
                f"`lrs`: t1 = {t1:g} is not a whole number of steps of lr = {lr:g}"
            )
        if round(count) % saves:
            raise ValueError(
                f"`saves` ({saves}) must divide the {round(count)} steps of "
                f"lr = {lr:g}, so GD saves fall on the flow's save times"
            )
        steps[lr] = int(round(count))
    return steps


class MovesFor(eqx.Module):
    """An optimizer factory for `gradient_descent`: plain GD,
    `optax.sgd(lr)`, whose updates are kept for the first `steps` steps and zero
    after (selected, not multiplied, so a non-finite gradient at the frozen θ
    moves nothing), so a program of any static length ≥ `steps` ends at θ_steps.
    `steps` is traced: one compiled program serves every lr of a ladder or a
    sweep, each run frozen after its own K = t1/lr steps."""

    steps: Float[Array, ""]

    def __call__(self, lr):
        def update(updates, count, params=None):
            keep = count < self.steps
            kept = jax.tree.map(lambda u: jnp.where(keep, u, 0.0), updates)
            return kept, count + 1

        freeze = optax.GradientTransformation(lambda _: jnp.array(0), update)
        return optax.chain(optax.sgd(lr), freeze)


#: the shared save grid of `ladder_descent` holds at most this many times the
#: saves asked for; a ladder that would need more runs each rate alone
_DENSEST = 16


def ladder_descent(loss, model, lrs, t1, saves: int = 1, **options) -> dict:
    """lr → `dynamics.gradient_descent` at that rate to the horizon `t1` (K =
    t1/lr steps), saved at `saves` + 1 equally spaced steps 0, K/saves, …, K;
    every rate in one compiled program.

    Each run is the program of the longest one, K_max steps saved every g steps
    (g the greatest common divisor of the rates' save strides K/saves), with its
    moves frozen after its own K (`MovesFor`): its trajectory is then the saves
    at its own save steps, and `final` is θ_K (the save at step K: the frozen
    steps move nothing, and a `projection` is never applied after it). A run that
    stopped before K keeps its `final`, `final_loss` and `stop_time`. The
    rates' θ and L are those of separate runs of K steps each; `stats` count the
    whole program (K_max steps: a shorter run computes, and discards, the
    gradients of its frozen steps). `options` go to `gradient_descent`
    (plain GD: no `optimizer`). Where the shared grid would be single steps or
    more than `_DENSEST`·`saves` saves, each rate runs alone (K steps, its own
    program).

    Raises a `ValueError` naming `lrs` or `saves` when t1 is not a whole number
    of steps of some rate, or `saves` does not divide its step count (see
    `ladder_steps`).
    """
    steps = ladder_steps(t1, lrs, saves)
    longest = max(steps.values())
    every = reduce(math.gcd, (k // saves for k in steps.values()))
    # a shared grid much denser than the saves asked for (rates with little in
    # common), or of single steps (the guarded loop) for strided saves: each
    # rate runs alone
    shared = every > 1 or longest == saves
    shared = shared and longest // every <= _DENSEST * saves
    dtype = jnp.result_type(float)
    runs = {}
    for lr, k in steps.items():
        length, grid = (longest, every) if shared else (k, k // saves)
        traj = gradient_descent(
            loss,
            model,
            lr=lr,
            steps=length,
            save_every=grid,
            optimizer=MovesFor(jnp.asarray(k, dtype)),
            **options,
        )
        index = np.arange(0, k // grid + 1, k // saves // grid)
        runs[lr] = _own_saves(traj, jnp.asarray(index))
    return runs


@eqx.filter_jit
def _own_saves(traj, index):
    """`traj` restricted to the saves at `index`, ending at the last of them
    unless it stopped before. (Compiled once per ladder: index is traced.)"""
    end = index[-1]
    stopped = traj.stats["stop_step"] >= 0

    def where(a, b):
        return jax.tree.map(lambda x, y: jnp.where(stopped, x, y), a, b)

    dynamic, static = eqx.partition(traj[end], eqx.is_array)
    final = eqx.combine(where(eqx.filter(traj.final, eqx.is_array), dynamic), static)
    return eqx.tree_at(
        lambda t: (t.ts, t.models, t.loss, t.final, t.final_loss, t.stop_time),
        traj,
        (
            traj.ts[index],
            traj[index],
            traj.loss[index],
            final,
            jnp.where(stopped, traj.final_loss, traj.loss[end]),
            jnp.where(stopped, traj.stop_time, traj.ts[end]),
        ),
    )
