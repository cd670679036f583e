r"""The plateau-skipping trainer (greedy low-rank learning; docs:
theory/saddle-to-saddle)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import positive_int, positive_scalar
from ..models import model_method
from ..models._protocol import class_path
from ._common import check_loss, split_model, stacked_model
from ._descent import gradient_descent
from ._results import RESULTS
from ._stopping import AbstractStopCondition
from ._trajectory import Trajectory


class _StageDone(AbstractStopCondition):
    """End of a loss-decrease stage: ‖∇L‖ < `grad_tol` (the next saddle is
    reached) or L < `loss_tol` (the target is reached)."""

    grad_tol: jax.Array
    loss_tol: jax.Array

    def __call__(self, value, grads):
        return (optax.tree.norm(grads) < self.grad_tol) | (value < self.loss_tol)


class _Probe(eqx.Module):
    """x ↦ f(x) + E·x: the model plus a linear map E, to read ∂L/∂E."""

    model: eqx.Module
    linear: jax.Array

    def __call__(self, x):
        return self.model(x) + self.linear @ x


def _architecture(model):
    """(number of units a round can add, σ'(0), shape (k, d) of E), from the
    model's `saddle_units()` (the model protocol, `flowgap.models.PROTOCOL`)."""
    units = model_method(model, "saddle_units")
    if units is None or model_method(model, "add_unit") is None:
        raise TypeError(
            "`model` must define the plateau-skipping hooks `saddle_units()` and "
            "`add_unit(index, left, right, size)` (see flowgap.models.PROTOCOL), as "
            "flowgap.models.TwoLayer (linear or tanh) and DeepLinear do; got "
            f"{class_path(model)}."
        )
    width, slope, (k, d) = units()
    return int(width), float(slope), (int(k), int(d))


def _zero(model):
    return jax.tree.map(
        lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else x, model
    )


@eqx.filter_jit
def _line_search(loss, model, direction):
    r"""ε* = −L'(0)/L''(0) for φ(ε) = L(f + ε·D·x), D = u₁v₁ᵀ: the minimiser of
    the quadratic model of the loss along the jump (exact for a linear net under
    half-MSE). One jvp of a gradient."""
    grad = jax.grad(lambda e: loss(_Probe(model, e * direction)))
    zero = jnp.zeros((), direction.dtype)
    slope, curvature = jax.jvp(grad, (zero,), (jnp.ones_like(zero),))
    return -slope / curvature


@eqx.filter_jit
def _coefficient_matrix(loss, model, slope, shape):
    r"""C = −σ'(0)·∂L/∂E at E = 0 for f(x) + E·x: one gradient evaluation."""
    dtype = jnp.result_type(*jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    probe = jnp.zeros(shape, dtype)
    grad = jax.grad(lambda e: loss(_Probe(model, e)))(probe)
    return -slope * grad


def saddle_skip(
    loss,
    model,
    *,
    lr,
    jump=1e-2,
    grad_tol=1e-6,
    loss_tol=None,
    stage_steps: int = 10_000,
    save_every: int = 1,
    max_rounds: int | None = None,
    line_search: bool = False,
) -> Trajectory:
    r"""Train by skipping the plateaus of small-init gradient descent.

    Small-init GD on a two-layer or deep linear network spends O(log(1/α)) steps
    on every plateau, waiting for the units to turn to the top eigenvector of the
    saddle (docs: theory/saddle-to-saddle). This trainer jumps there and runs GD only
    through the
    loss-decrease stages:

    1. Start at the origin saddle θ₀ = 0 (the values in `model` are ignored; its
       architecture is used).
    2. Round r: at the saddle θ_{r−1}, the coefficient matrix

       $$C_{r} = -\sigma'(0)\,\frac{\partial L}{\partial W}\Big|_{\theta_{r-1}}
       = \frac{\sigma'(0)}{n}\sum_j (y_j - f(x_j))\,x_j^\top
       \in \mathbb{R}^{k\times d}$$

       is the derivative of L with respect to a linear map added to the network's
       output, f(x) + W·x, at W = 0 (for a linear net W = W₂W₁, C = −∂L/∂(W₂W₁)).
       A zero unit (a, b) near θ_{r−1} follows the linearised flow
       (ȧ, ḃ) = (Cᵀb, Ca), whose top eigenpair is λ = σ₁(C) with eigenvector
       (v₁, u₁)/√2 from the SVD C = Σ σᵢuᵢvᵢᵀ of this small k×d matrix (no
       parameter Hessian is formed). Stop if λ ≤ 0 (numerically: if the jump's
       gradient, √(2ε)·λ, would already be below `grad_tol`), if L ≤ `loss_tol`,
       or when every unit is used.
    3. Jump: unit r (zero so far) becomes √ε·(v₁, u₁), adding ε·u₁v₁ᵀ to the
       end-to-end map; for depth N, a rank-one path ε^{1/N}(v₁, 1, …, 1, u₁)
       through hidden index r. With `line_search=True` the size is instead
       ε* = argmin_ε of the quadratic model of ε ↦ L(f + ε·u₁v₁ᵀx) (exact for
       linear nets): the same direction, but landing near the end of the stage
       rather than at its start (counted as 2 gradient evaluations).
    4. Run `gradient_descent` at rate `lr` until ‖∇L‖ < `grad_tol` (or
       L < `loss_tol`): the loss-decrease stage, ending at the next saddle θ_r.
       Unused units stay exactly zero (their gradient is exactly zero since
       σ(0) = 0), so θ_r is a saddle of the full network.

    **Greedy low-rank learning (GLRL, Li, Luo & Lyu 2021) is the special case**
    of a matrix-factorisation loss L(W) = ½‖W − W*‖²_F/d (inputs X = I) on a
    `DeepLinear((d, h, k))` or linear `TwoLayer`: W₀ = 0; round r takes the top
    eigenpair (λ, u) of −∇L(W_{r−1}) (here the top singular pair of the
    non-symmetric C), stops if λ ≤ 0, appends √ε·u as a new column (here the
    pair √ε·(v, u)) and descends to convergence. Every W_r is then the best
    rank-r approximation of W* (Eckart–Young), as tested.

    **Arguments:**

    - `loss`: model → scalar, e.g. `problem.loss`. It must evaluate the model
      as a function x ↦ f(x) on input vectors (the probe f(x) + W·x is passed in
      place of the model to read C).
    - `model`: any model with the hooks `saddle_units` and `add_unit` of the
      model protocol (`flowgap.models.PROTOCOL`): a `flowgap.models.TwoLayer`
      with σ(0) = 0 < σ'(0) (linear, tanh), a `flowgap.models.DeepLinear` with at
      least one hidden layer, or a user's model defining them.
    - `lr`: GD step η > 0.
    - `jump`: ε > 0, the size of the rank-one piece added at each jump.
    - `grad_tol`: a loss-decrease stage ends when ‖∇L‖₂ < `grad_tol`.
    - `loss_tol`: stop once L < `loss_tol` (default: never by the loss).
    - `stage_steps`: the most GD steps per stage (static); a stage that has not
      converged by then ends the run with `RESULTS.max_steps_reached`.
    - `save_every`: save every this many GD steps within a stage (must divide
      `stage_steps`).
    - `line_search`: size each jump by ε* (above) instead of `jump` (which is
      then used only where ε* is not positive and finite).
    - `max_rounds`: the most rounds (default: the number of units, for depth
      N the smallest hidden width).

    **Returns:** a `Trajectory` whose clock `ts` counts **gradient
    evaluations**, not time: each GD step is one, and each coefficient matrix C
    is one (a gradient with respect to E). Saves are the origin, each jump and
    the GD saves of each stage. `stats` holds `num_grad_evals` (the total),
    `num_steps` (GD steps), `num_rounds` (jumps made) and, per saddle visited
    (origin first), `saddle_loss`, `saddle_rank` (the number of units in use,
    which is the rank of the end-to-end map), `saddle_eigenvalue` λ = σ₁(C),
    `saddle_index` (the save holding that saddle: `traj[i]`),
    `saddle_grad_evals` (the clock there) and `stage_steps` (GD steps of each
    stage). `result` is `successful`, `max_steps_reached` (a stage did not
    converge) or `diverged`.
    """
    loss = check_loss(loss)
    lr = positive_scalar("lr", lr)
    jump = positive_scalar("jump", jump)
    grad_tol = positive_scalar("grad_tol", grad_tol)
    loss_tol = (
        jnp.asarray(-jnp.inf)
        if loss_tol is None
        else positive_scalar("loss_tol", loss_tol)
    )
    stage_steps = positive_int("stage_steps", stage_steps)
    save_every = positive_int("save_every", save_every)
    if stage_steps % save_every:
        raise ValueError(
            f"`save_every` ({save_every}) must divide `stage_steps` ({stage_steps})."
        )
    width, slope, shape = _architecture(model)
    rounds = width if max_rounds is None else positive_int("max_rounds", max_rounds)
    if rounds > width:
        raise ValueError(
            f"`max_rounds` must be at most the number of units ({width}), got {rounds}."
        )
    stop = _StageDone(grad_tol, loss_tol)
    current = _zero(model)
    log = _Log(current, loss, lr)
    result = RESULTS.successful
    for unit in range(rounds + 1):
        value = float(loss(current))
        coefficient = np.asarray(_coefficient_matrix(loss, current, slope, shape))
        left, sigma, right = np.linalg.svd(coefficient, full_matrices=False)
        log.saddle(current, value, float(sigma[0]), unit)
        if unit == rounds or value < float(loss_tol):
            break
        if np.sqrt(2 * float(jump)) * sigma[0] <= float(grad_tol):
            break
        size = jump
        if line_search:
            direction = jnp.outer(left[:, 0], right[0])
            best = float(_line_search(loss, current, slope * direction))
            log.evals += 2  # a jvp of a gradient
            size = best if np.isfinite(best) and best > 0 else jump
        current = model_method(current, "add_unit")(unit, left[:, 0], right[0], size)
        log.jump(current, loss)
        stage = gradient_descent(
            loss,
            current,
            lr=lr,
            steps=stage_steps,
            save_every=save_every,
            stop_when=stop,
        )
        log.stage(stage)
        current = stage.final
        if stage.result != RESULTS.event_occurred:
            result = (
                RESULTS.diverged
                if stage.result == RESULTS.diverged
                else RESULTS.max_steps_reached
            )
            break
    return log.trajectory(current, loss, result)


class _Log:
    """Host-side record of saves and saddles, assembled into one Trajectory."""

    def __init__(self, start, loss, lr):
        self.lr = float(lr)
        self.params, self.static = split_model(start)
        self.saves = [(0, self.params, float(loss(start)))]
        self.evals = 0
        self.steps = 0
        self.saddles = []
        self.stage_steps = []
        self.saddle_saves = []

    def saddle(self, model, value, eigenvalue, units):
        self.evals += 1  # the gradient giving C
        self.saddles.append((value, units, eigenvalue, self.evals))
        self.saddle_saves.append(len(self.saves) - 1)

    def jump(self, model, loss):
        self.saves.append((self.evals, split_model(model)[0], float(loss(model))))

    def stage(self, traj: Trajectory):
        taken = int(traj.stats["num_grad_evals"])
        keep = np.isfinite(np.asarray(traj.loss))
        steps = np.rint(np.asarray(traj.ts)[keep] / self.lr).astype(int)
        # host copies: thousands of saves are sliced and stacked in numpy, not
        # as thousands of device ops (a jnp.stack of N arrays compiles in O(N²))
        params = jax.tree.map(np.asarray, split_model(traj.models)[0])
        for i, k in zip(np.flatnonzero(keep)[1:], steps[1:]):
            self.saves.append(
                (
                    self.evals + int(min(k, taken)),
                    jax.tree.map(lambda x: x[i], params),
                    float(traj.loss[i]),
                )
            )
        if self.saves[-1][0] < self.evals + taken:
            final = split_model(traj.final)[0]
            self.saves.append((self.evals + taken, final, float(traj.final_loss)))
        self.evals += taken
        steps_taken = int(traj.stats["num_steps"])
        self.steps += steps_taken
        self.stage_steps.append(steps_taken)

    def trajectory(self, final, loss, result) -> Trajectory:
        clock, params, values = zip(*self.saves)
        saddles = np.asarray(self.saddles, dtype=float).reshape(-1, 4)
        stacked = jax.tree.map(
            lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *params
        )
        dtype = jnp.result_type(*jax.tree.leaves(self.params))
        return Trajectory(
            ts=jnp.asarray(clock, dtype),
            models=stacked_model(stacked, self.static, len(clock)),
            loss=jnp.asarray(values, dtype),
            final=final,
            final_loss=loss(final),
            stop_time=jnp.asarray(self.evals, dtype),
            result=result,
            stats=dict(
                num_grad_evals=jnp.asarray(self.evals),
                num_steps=jnp.asarray(self.steps),
                num_rounds=jnp.asarray(len(self.stage_steps)),
                saddle_loss=jnp.asarray(saddles[:, 0], dtype),
                saddle_rank=jnp.asarray(saddles[:, 1].astype(int)),
                saddle_eigenvalue=jnp.asarray(saddles[:, 2], dtype),
                saddle_grad_evals=jnp.asarray(saddles[:, 3].astype(int)),
                saddle_index=jnp.asarray(self.saddle_saves, dtype=int),
                stage_steps=jnp.asarray(self.stage_steps, dtype=int),
            ),
        )
