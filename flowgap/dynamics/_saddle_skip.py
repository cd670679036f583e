r"""The plateau-skipping trainer (greedy low-rank learning; docs:
theory/saddle-to-saddle)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import positive_int, positive_scalar
from ._common import check_loss, split_model, stacked_model
from ._descent import gradient_descent
from ._results import RESULTS
from ._saddle_jump import (
    jump_piece,
    land,
    newton_stage,
    saddle_probe,
    units_of,
    zero_model,
)
from ._stopping import AbstractStopCondition
from ._trajectory import Trajectory


class _StageDone(AbstractStopCondition):
    """End of a loss-decrease stage: ‖∇L‖ < `grad_tol` (the next saddle is
    reached) or L < `loss_tol` (the target is reached)."""

    grad_tol: jax.Array
    loss_tol: jax.Array

    def __call__(self, value, grads):
        return (optax.tree.norm(grads) < self.grad_tol) | (value < self.loss_tol)


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
    whiten: bool = False,
    newton: bool = False,
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
       rather than at its start (one Hessian-vector product). With
       `whiten=True` it is the rank-one minimiser u vᵀ of the loss's (exact, for
       half-MSE) quadratic model in a map E added to the output: u the top left
       singular vector of the whitened GΣ^{−1/2} (G = C/σ'(0), Σ = XᵀX/n),
       v = Σ⁻¹Gᵀu, Σ⁻¹ by conjugate gradients on Hessian-vector products (Σ is
       never formed). For a linear net it lands on the next saddle exactly, where
       a jump along C's pair on anisotropic inputs leaves a stage of
       O(1/(ηλ_min)) steps (docs: theory/saddle-to-saddle).
    4. Probe the landing (one gradient: L, C and ‖∇θL‖). If ‖∇L‖ < `grad_tol`
       (or L < `loss_tol`) it is the next saddle θ_r; otherwise run
       `gradient_descent` at rate `lr` until it is: the loss-decrease stage.
       Unused units stay exactly zero (their gradient is exactly zero since
       σ(0) = 0), so θ_r is a saddle of the full network. With `newton=True`
       the stage is truncated Newton–CG with an Armijo backtracking line search
       instead (`newton_stage`): for a tanh net the whitened jump lands near,
       not on, the next saddle, and a GD stage converges onto it only at the
       rate of the smallest curvature in the used units (docs:
       theory/saddle-to-saddle, tanh networks).

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
    - `whiten`: jump by the whitened rank-one minimiser (above); `jump` then
      sets only the stopping test of step 2.
    - `newton`: run each stage by Newton–CG (above); `stage_steps` then bounds
      its Newton steps, and `lr` and `save_every` are unused.
    - `max_rounds`: the most rounds (default: the number of units, for depth
      N the smallest hidden width).

    **Returns:** a `Trajectory` whose clock `ts` counts **gradient
    evaluations**, not time: each GD step is one, each probe (L, C, ‖∇θL‖ at a
    saddle or landing) is one, each Newton step one (its gradient, plus one at a
    stage's start), and each Hessian-vector product counts as two.
    Saves are the origin, each landing and the GD saves of each stage. `stats`
    holds `num_grad_evals` (the total), `num_hvps` (the products within it),
    `num_loss_evals` (L evaluated alone, by the GD stages or the Newton line
    searches; the forward pass runs
    `num_grad_evals − num_hvps + num_loss_evals` times in all),
    `num_steps` (GD or Newton steps), `num_rounds` (jumps made) and, per saddle
    visited (origin first), `saddle_loss`, `saddle_rank` (the number of units in use,
    which is the rank of the end-to-end map), `saddle_eigenvalue` λ = σ₁(C),
    `saddle_coefficient` (C itself),
    `saddle_index` (the save holding that saddle: `traj[i]`),
    `saddle_grad_evals` (the clock there) and `stage_steps` (GD or Newton steps
    of each stage). `result` is `successful`, `max_steps_reached` (a stage did not
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
    width, slope, shape = units_of(model)
    rounds = width if max_rounds is None else positive_int("max_rounds", max_rounds)
    if rounds > width:
        raise ValueError(
            f"`max_rounds` must be at most the number of units ({width}), got {rounds}."
        )
    if whiten and line_search:
        raise ValueError("`whiten` and `line_search` are two jump rules: pick one.")
    rule = "whiten" if whiten else "line_search" if line_search else "fixed"
    stop = _StageDone(grad_tol, loss_tol)
    reach, gtol, ltol = np.sqrt(2 * float(jump)), float(grad_tol), float(loss_tol)
    current = zero_model(model)
    log = _Log(current, lr)
    result = RESULTS.successful
    probe = log.probe(current, loss, slope, shape)
    for unit in range(rounds + 1):
        value, coefficient, _ = probe
        left, sigma, right = np.linalg.svd(coefficient, full_matrices=False)
        log.saddle(value, float(sigma[0]), unit, coefficient)
        if unit == rounds or value < ltol or reach * sigma[0] <= gtol:
            break
        pieces = jump_piece(rule, loss, current, coefficient, slope, jump, log)
        current = land(current, unit, *pieces)
        probe = log.probe(current, loss, slope, shape)
        log.jump(current, probe[0])
        if probe[2] < gtol or probe[0] < ltol:
            log.stage_steps.append(0)  # landed on the next saddle: no GD needed
            continue
        if newton:
            current, done = log.newton(newton_stage, loss, current, stop, stage_steps)
            if not done:
                result = RESULTS.max_steps_reached
                break
            probe = log.probe(current, loss, slope, shape)
            continue
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
        probe = log.probe(current, loss, slope, shape)
    return log.trajectory(current, result)


class _Log:
    """Host-side record of saves, saddles and evaluations, assembled into one
    Trajectory. Saves are kept in chunks (clock, params with a leading save
    axis, losses) as numpy arrays: a stage's thousands of saves cost one slice,
    not thousands of device ops."""

    def __init__(self, start, lr):
        self.lr = float(lr)
        self.params, self.static = split_model(start)
        self.chunks = []
        self.count = 0  # saves so far
        self.evals = self.loss_evals = self.hvps = self.steps = 0
        self.final_loss = np.nan
        self.saddles, self.stage_steps, self.saddle_saves = [], [], []
        self.coefficients = []

    def save(self, clock, params, values):
        """Append saves: `clock` and `values` 1-D, `params` with a save axis."""
        params = jax.tree.map(np.asarray, params)
        self.chunks.append((np.asarray(clock), params, np.asarray(values)))
        self.count += len(clock)

    def single(self, clock, params, value):
        self.save([clock], jax.tree.map(lambda x: np.asarray(x)[None], params), [value])

    def probe(self, model, loss, slope, shape):
        """(L, C, ‖∇θL‖) on the host: one gradient evaluation. The first one
        gives L(0), saved with the origin."""
        value, coefficient, norm = saddle_probe(loss, model, slope, shape)
        self.evals += 1
        self.final_loss = float(value)
        if self.count == 0:
            self.single(0, self.params, self.final_loss)
        return self.final_loss, np.asarray(coefficient), float(norm)

    def saddle(self, value, eigenvalue, units, coefficient):
        self.saddles.append((value, units, eigenvalue, self.evals))
        self.coefficients.append(coefficient)
        self.saddle_saves.append(self.count - 1)

    def products(self, count):
        """`count` Hessian-vector products, each counted as 2 gradients."""
        self.hvps += count
        self.evals += 2 * count

    def jump(self, model, value):
        self.single(self.evals, split_model(model)[0], value)

    def newton(self, stage, loss, model, stop, iterations):
        """Run a Newton–CG stage (`newton_stage`), record its end and counts:
        (the model there, whether it converged)."""
        model, value, _, counts = stage(
            loss, model, stop.grad_tol, stop.loss_tol, iterations
        )
        steps, grads, hvps, losses, done = (int(c) for c in counts)
        self.evals += grads
        self.products(hvps)
        self.loss_evals += losses
        self.steps += steps
        self.stage_steps.append(steps)
        self.final_loss = float(value)
        self.single(self.evals, split_model(model)[0], self.final_loss)
        return model, bool(done)

    def stage(self, traj: Trajectory):
        taken = int(traj.stats["num_grad_evals"])
        loss = np.asarray(traj.loss)
        keep = np.flatnonzero(np.isfinite(loss))[1:]  # the first is the landing
        steps = np.rint(np.asarray(traj.ts)[keep] / self.lr).astype(int)
        params = split_model(traj.models)[0]
        self.save(
            self.evals + np.minimum(steps, taken),
            jax.tree.map(lambda x: np.asarray(x)[keep], params),
            loss[keep],
        )
        last = self.evals + (min(steps[-1], taken) if steps.size else 0)
        if last < self.evals + taken:
            final = split_model(traj.final)[0]
            self.single(self.evals + taken, final, float(traj.final_loss))
        self.evals += taken
        self.loss_evals += int(traj.stats["num_loss_evals"])
        self.final_loss = float(traj.final_loss)
        steps_taken = int(traj.stats["num_steps"])
        self.steps += steps_taken
        self.stage_steps.append(steps_taken)

    def trajectory(self, final, result) -> Trajectory:
        clock = np.concatenate([c[0] for c in self.chunks])
        values = np.concatenate([c[2] for c in self.chunks])
        stacked = jax.tree.map(
            lambda *xs: jnp.asarray(np.concatenate(xs)), *[c[1] for c in self.chunks]
        )
        saddles = np.asarray(self.saddles, dtype=float).reshape(-1, 4)
        dtype = jnp.result_type(*jax.tree.leaves(self.params))
        return Trajectory(
            ts=jnp.asarray(clock, dtype),
            models=stacked_model(stacked, self.static, len(clock)),
            loss=jnp.asarray(values, dtype),
            final=final,
            final_loss=jnp.asarray(self.final_loss, dtype),
            stop_time=jnp.asarray(self.evals, dtype),
            result=result,
            stats=dict(
                num_grad_evals=jnp.asarray(self.evals),
                num_hvps=jnp.asarray(self.hvps),
                num_loss_evals=jnp.asarray(self.loss_evals),
                num_steps=jnp.asarray(self.steps),
                num_rounds=jnp.asarray(len(self.stage_steps)),
                saddle_loss=jnp.asarray(saddles[:, 0], dtype),
                saddle_rank=jnp.asarray(saddles[:, 1].astype(int)),
                saddle_eigenvalue=jnp.asarray(saddles[:, 2], dtype),
                saddle_coefficient=jnp.asarray(np.stack(self.coefficients), dtype),
                saddle_grad_evals=jnp.asarray(saddles[:, 3].astype(int)),
                saddle_index=jnp.asarray(self.saddle_saves, dtype=int),
                stage_steps=jnp.asarray(self.stage_steps, dtype=int),
            ),
        )
