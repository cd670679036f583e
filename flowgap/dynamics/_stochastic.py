r"""Stochastic gradient descent and label-noise GD, on GD's clock t = k·η and in
GD's compiled loop."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PyTree

from ._descent import run_descent
from ._minibatch import Minibatches, check_batch_loss, check_targets
from ._trajectory import Trajectory


class BatchLoss(eqx.Module):
    r"""A batch loss `loss(model, batch)` with its data and minibatches.

    Called on a model it is the full training loss L = loss(model, data), what
    a run saves and what its flows descend; `step(model, k)` is the loss of step
    k's minibatch (with its label noise), L_{B_k}."""

    loss: Callable
    batches: Minibatches

    def __call__(self, model):
        return self.loss(model, self.batches.data)

    def step(self, model, step):
        return self.loss(model, self.batches.batch(step))

    def bind(self, static) -> "_StepLoss":
        return _StepLoss(self, static)


class _StepLoss(eqx.Module):
    """(trainable params, k) → L_{B_k}: the function DescentProgram steps on."""

    batch_loss: BatchLoss
    static: PyTree

    def __call__(self, params, step):
        out = self.batch_loss.step(eqx.combine(params, self.static), step)
        if jnp.shape(out) != ():
            raise ValueError(
                "`loss(model, batch)` must return a scalar, got shape "
                f"{jnp.shape(out)}."
            )
        return out


def make_batch_loss(loss, data, *, key, **sampling) -> BatchLoss:
    """The checked `BatchLoss` of `stochastic_descent` and `stochastic_flow`."""
    loss = check_batch_loss(loss)
    batches = Minibatches(data, key, **sampling)
    if sampling.get("label_noise") is not None:
        check_targets(sampling.get("targets"), batches.data)
    return BatchLoss(loss, batches)


def stochastic_descent(
    loss,
    model,
    data,
    *,
    lr,
    steps: int,
    batch_size: int,
    key,
    save_every: int = 1,
    save_steps=None,
    replace: bool = True,
    epochs: bool = True,
    label_noise=None,
    targets=None,
    optimizer=None,
    rates=None,
    projection=None,
    stop_when=None,
    max_loss=None,
    throw: bool = False,
    progress_meter: diffrax.AbstractProgressMeter | None = None,
    trainable=None,
) -> Trajectory:
    r"""Minibatch stochastic gradient descent, or label-noise GD, as one jitted
    program on the clock t = k·η (docs: theory/sgd).

    $$\theta_{k+1} = \theta_k - \eta\,P\odot\nabla L_{B_k}(\theta_k),\qquad
    L_B(\theta) = \texttt{loss}(\theta, B),\qquad t_k = k\eta,$$

    with B_k the k-th minibatch of `data`, drawn from `key`. It is
    `gradient_descent`'s loop (same saves, guard, divergence replay, counters,
    meters and checkpointed reverse mode) with the step's gradient taken on B_k.

    **Arguments:**

    - `loss`: `loss(model, batch)`, the mean loss over a batch (a pytree shaped
      like `data`, with b examples).
    - `model`: the initial model (any Equinox module).
    - `data`: a pytree of arrays with a leading example axis of size n, e.g.
      `(inputs, targets)` (traced: new data of the same shapes never recompile).
    - `lr`: η > 0 (traced). `steps`: K (static).
    - `batch_size`: b, 1 ≤ b ≤ n (static).
    - `key`: a PRNG key. The minibatches and label noise of step k are functions
      of (key, k) alone, so the same key gives the same run bit for bit, and a
      vmapped batch of keys gives independent runs (vmap over `key`, `lr` and
      `data` all compile once).
    - `replace`: True draws each B_k as b uniform indices with replacement; False
      takes epochs of random permutations (⌊n/b⌋ steps per epoch, the remainder of
      each permutation dropped). b = n without replacement is full-batch GD.
    - `epochs`: with `replace=False`, False draws every B_k as an independent
      uniform b-subset instead of walking epochs. (Within an epoch the batches
      are dependent, and their noise largely cancels over the epoch: the SDE's
      without-replacement factor describes one step's law, exactly the law of
      `epochs=False`; see docs: theory/sgd.)
    - `label_noise`: δ > 0 adds i.i.d. N(0, δ²) noise to the targets of every
      drawn example at every step (label-noise GD with `batch_size = n,
      replace=False`). `targets` selects the target array of a batch, as
      `where` in `eqx.tree_at` (default: the batch's last array, the targets of
      `(inputs, targets)`).
    - `save_every`, `save_steps`, `optimizer` (any optax transformation, fed
      P∇L_{B_k}), `rates`, `projection`, `stop_when`, `max_loss`, `throw`,
      `progress_meter`, `trainable`: as in `gradient_descent`.

    **Returns:** a `Trajectory` as `gradient_descent`'s. Its `loss` is the full
    training loss L at the saves, the guard (divergence, `max_loss`) and
    `stop_when` see the full L(θ_k) and the step's minibatch gradient ∇L_{B_k}.
    `stats["num_grad_evals"]` counts minibatch gradients (each costs b/n of a
    full one) and `num_loss_evals` full losses (one per guarded step besides
    gradient descent's).
    """
    batch_loss = make_batch_loss(
        loss,
        data,
        key=key,
        batch_size=batch_size,
        replace=replace,
        epochs=epochs,
        label_noise=label_noise,
        targets=targets,
    )
    return run_descent(
        batch_loss,
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
        layerwise=None,
        check_stability=False,
        trainable=trainable,
        step_loss=batch_loss,
    )
