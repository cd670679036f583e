r"""The stochastic modified equations of SGD and label-noise GD, solved by
Diffrax on the flow engine."""

import jax
import jax.random as jr

from .._checks import positive_scalar
from ._field import GradientField
from ._flow import gradient_flow
from ._modified import ModifiedField, _check_order
from ._noise import MinibatchNoise
from ._stochastic import make_batch_loss
from ._trajectory import Trajectory


def stochastic_flow(
    loss,
    model,
    data,
    *,
    lr,
    batch_size: int,
    t1,
    key,
    ts=None,
    order: int = 1,
    replace: bool = True,
    label_noise=None,
    targets=None,
    subset: int | None = None,
    solver=None,
    dt0=None,
    rates=None,
    **kwargs,
) -> Trajectory:
    r"""The stochastic modified equation of SGD (or label-noise GD), solved with
    `diffrax.diffeqsolve` on the clock t = k·η (docs: theory/sgd):

    $$d\theta = -P\nabla\tilde L(\theta)\,dt
      + \sqrt{\eta}\,P\,\Sigma(\theta)^{1/2}\,dW_t,\qquad
      \tilde L = L \;(\text{order 1}),\quad
      L + \tfrac{\eta}{4}\lVert\nabla L\rVert^2 \;(\text{order 2, } P = I),$$

    L the full loss `loss(model, data)` and Σ SGD's gradient-noise covariance
    for batch size b: Cov_i(∇ℓᵢ)/b with replacement, times (n − b)/(n − 1)
    without, plus the label noise's δ²ΣᵢJᵢJᵢᵀ/(bn) (see `MinibatchNoise`, which
    builds Σ^{½}dW from centred per-example gradients, never a D×D matrix). In
    the weak sense, E φ(θ_k) of SGD and E φ(θ(kη)) of this SDE agree to O(η)
    at order 1 and O(η²) at order 2 (Li, Tai & E 2017, 2019), on a fixed
    horizon, for smooth φ. The order-2 drift is `ModifiedField(lr, order=1)`,
    the order-1 modified flow of gradient descent.

    **Arguments** (those shared with `stochastic_descent` mean the same):

    - `loss`, `model`, `data`, `lr` (η, traced), `batch_size`, `replace`,
      `label_noise`, `targets`.
    - `t1`: the horizon; `ts`: save times in [0, t1] (default 0 and t1), e.g. a
      `stochastic_descent` trajectory's `ts`.
    - `key`: the Brownian motion's key. The same key gives the same path bit for
      bit; vmap over keys for independent paths. W is a virtual Brownian tree,
      a deterministic function of (key, t) at the resolution `brownian_tol`
      (default `dt0`/16): runs at two `dt0` with one fixed `brownian_tol` see the
      same Brownian path, so a step-size refinement is coupled.
    - `order`: 1 or 2 (static).
    - `subset`: estimate Σ from this many rows per window of length η (an
      unbiased estimate; see `MinibatchNoise`), for large n.
    - `solver`: a Diffrax SDE solver (default `diffrax.Euler()`,
      Euler–Maruyama, weak order 1 in `dt0`).
    - `dt0`: the solver's constant step (default η/10, held fixed when
      differentiating in η). Euler–Maruyama's weak
      error is O(dt0): keep it well below the model's own, O(η) at order 1 and
      O(η²) at order 2, or cancel its leading term by Richardson extrapolation,
      2E[φ]_{dt0/2} − E[φ]_{dt0}, on coupled paths (one `brownian_tol`).
    - `rates`: P, as in `stochastic_descent`.
    - Every other keyword is `gradient_flow`'s (`stepsize_controller`,
      `adjoint`, `stop_when`, `max_steps`, `brownian_tol`, `throw`,
      `progress_meter`, `trainable`).

    **Returns:** a `Trajectory` as `gradient_flow`'s; `stats["num_example_grads"]`
    counts the per-example gradients the diffusion took (n, or `subset`, per
    step).
    """
    lr = positive_scalar("lr", lr)
    order = _check_order(order, (1, 2))
    batch_loss = make_batch_loss(
        loss,
        data,
        key=key,
        batch_size=batch_size,
        replace=replace,
        label_noise=label_noise,
        targets=targets,
    )
    # the minibatch key of `make_batch_loss` is unused by the flow; the Brownian
    # motion and the subset windows draw from their own stream
    noise = MinibatchNoise(
        batch_loss, lr, jr.fold_in(batch_loss.batches.key, 1), subset
    )
    field = GradientField(rates) if order == 1 else ModifiedField(lr, 1, rates)
    # the default grid is held fixed under d/dη (Diffrax cannot differentiate the
    # times at which the Brownian path is read): the derivative of the SDE's law
    dt0 = jax.lax.stop_gradient(lr) / 10 if dt0 is None else dt0
    return gradient_flow(
        batch_loss,
        model,
        t1=t1,
        ts=ts,
        field=field,
        noise=noise,
        solver=solver,
        dt0=dt0,
        **kwargs,
    )
