r"""Diffusion terms of the flows: the noise of SGD and label-noise GD, as the
g(t, θ) of dθ = F(t, θ)dt + g(t, θ)dW that `gradient_flow(..., noise=...)`
hands to Diffrax as a `ControlTerm` (docs: theory/sgd)."""

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from ._minibatch import take
from ._objective import Objective


class AbstractNoise(eqx.Module):
    r"""The diffusion g(t, θ) ∈ ℝ^{D×m} of a flow driven by an m-dimensional
    Brownian motion W, dθ = F(t, θ)dt + g(t, θ)dW (Itô).

    `gradient_flow(loss, model, field=..., noise=...)` solves it with
    `diffrax.diffeqsolve` on `MultiTerm(ODETerm(F), ControlTerm(g, W))`, W a
    `diffrax.VirtualBrownianTree` drawn from `key`: the same key gives the same
    path, at any step size, and the path is differentiable.

    **Interface:** `key` (the Brownian motion's key), `size` (m, static),
    `__call__(t, θ, objective)` → g, shape (D, m), and `rows_per_call` (the
    per-example gradients one call takes, for `stats["num_example_grads"]`).
    """

    key: eqx.AbstractVar[PRNGKeyArray]

    @property
    @abc.abstractmethod
    def size(self) -> int:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def rows_per_call(self) -> int:
        raise NotImplementedError

    @abc.abstractmethod
    def __call__(
        self, t: Float[Array, ""], y: Float[Array, " D"], objective: Objective
    ) -> Float[Array, "D m"]:
        raise NotImplementedError


def _per_example(batch_loss, objective: Objective, y, rows, with_targets: bool):
    r"""For each example i of `rows`: ∇θℓᵢ (D,), and with `with_targets` also
    ∂_{yᵢ}∇θℓᵢ (D × size of one target), ℓᵢ = loss(model, example i as a batch
    of one). One vmapped gradient (and jacfwd in the target): no D×D matrix."""
    examples = take(batch_loss.batches.data, rows)
    select = batch_loss.batches.targets

    def grad_at(example, target):
        batch = jax.tree.map(lambda x: x[None], example)
        batch = eqx.tree_at(select, batch, target[None])
        return jax.grad(lambda p: batch_loss.loss(objective.model(p), batch))(y)

    def one(example):
        target = select(jax.tree.map(lambda x: x[None], example))[0]
        grad = grad_at(example, target)
        if not with_targets:
            return grad, None
        mixed = jax.jacfwd(lambda z: grad_at(example, z))(target)
        return grad, mixed.reshape(grad.shape[0], -1)

    return jax.vmap(one)(examples)


class MinibatchNoise(AbstractNoise):
    r"""The noise of SGD with batch size b and step η, and of label noise δ:
    √η Σ^{½}dW with

    $$\Sigma = \frac{c_b}{b}\operatorname{Cov}_i(\nabla\ell_i)
      + \frac{\delta^2}{b\,n}\sum_i J_iJ_i^\top,\qquad
      c_b = 1 \text{ (with replacement)},\ \frac{n-b}{n-1}\text{ (without)},$$

    Cov_i the population covariance of the per-example gradients and
    J_i = ∂_{y_i}∇θℓ_i (for ℓ = ½‖f − y‖², J_i = −∇θf(x_i)). It never forms Σ:
    with G the n×D matrix of centred per-example gradients, Gᵀ dW′/√(nb) has the
    law of (Cov_i/b)^{½}dW, W′ an n-dimensional Brownian motion (Li, Tai & E
    2019), and the label part is δ(bn)^{−½}[J_1 … J_n]dW″.

    `subset=m` < n estimates Σ from m rows drawn without replacement, redrawn in
    each window [kη, (k+1)η) from (key, k): the rows' sample covariance with
    denominator m − 1, times (n − 1)/n, is an unbiased estimate of Cov_i, and
    (n/m)Σ_{i∈S}J_iJ_iᵀ of the label part, so the SDE's generator is unbiased
    at every θ. Cost per call: n (or m) per-example gradients, plus a jvp per
    target entry with label noise.

    The label part is exact for losses whose gradient is affine in the targets
    (squared error, cross-entropy with soft labels); otherwise it is the
    linearisation in δ.
    """

    batch_loss: eqx.Module  # `BatchLoss`: loss(model, batch), data, minibatches
    lr: Float[Array, ""]
    key: PRNGKeyArray
    subset: int | None = eqx.field(static=True)

    def __init__(self, batch_loss, lr, key, subset=None):
        self.batch_loss = batch_loss
        self.lr = positive_scalar("lr", lr)
        self.key = key
        n = batch_loss.batches.n
        if subset is not None:
            subset = positive_int("subset", subset, minimum=2)
            if subset >= n:
                raise ValueError(
                    f"`subset` must be below the number of examples n = {n} (it "
                    f"estimates the noise from that many rows), got {subset}."
                )
        self.subset = subset
        if self._sampling_scale() == 0 and batch_loss.batches.label_noise is None:
            raise ValueError(
                "there is no noise to model: `batch_size` = n without replacement "
                "and no `label_noise` is full-batch gradient descent; use "
                "`gradient_flow` or `modified_flow`."
            )

    @property
    def _n(self) -> int:
        return self.batch_loss.batches.n

    @property
    def rows_per_call(self) -> int:
        return self._n if self.subset is None else self.subset

    def _sampling_scale(self) -> float:
        """c_b/b: the factor of Cov_i in Σ."""
        batches = self.batch_loss.batches
        b, n = batches.batch_size, batches.n
        return 1 / b if batches.replace else (n - b) / ((n - 1) * b)

    @property
    def _target_size(self) -> int:
        batches = self.batch_loss.batches
        if batches.label_noise is None:
            return 0
        return batches.targets(batches.data)[0].size

    @property
    def size(self) -> int:
        rows = self.rows_per_call
        sampling = rows if self._sampling_scale() > 0 else 0
        return sampling + rows * self._target_size

    def rows(self, t) -> Int[Array, " m"]:
        """The rows that estimate Σ in the window of time t (all n rows without
        `subset`)."""
        if self.subset is None:
            return jnp.arange(self._n)
        window = jnp.floor(t / self.lr).astype(jnp.int32)
        permutation = jr.permutation(jr.fold_in(self.key, window), self._n)
        return permutation[: self.subset]

    def __call__(self, t, y, objective):
        batches = self.batch_loss.batches
        rows = self.rows(t)
        labels = batches.label_noise is not None
        grads, mixed = _per_example(self.batch_loss, objective, y, rows, labels)
        n, m = self._n, rows.shape[0]
        blocks = []
        if self._sampling_scale() > 0:
            # the per-row weight: Cov_i ≈ (1/n)GᵀG exactly, or the unbiased subset
            # estimate (n − 1)/(n(m − 1)) G_SᵀG_S with G_S centred on its own mean
            weight = 1 / n if self.subset is None else (n - 1) / (n * (m - 1))
            centred = grads - jnp.mean(grads, axis=0)
            blocks.append(jnp.sqrt(self._sampling_scale() * weight) * centred.T)
        if labels:
            # (δ²/(bn))ΣJ_iJ_iᵀ, with J_i = n·∂_{y_i}∇L = ∂_{y_i}∇ℓ_i; (n/m) on a subset
            scale = batches.label_noise / jnp.sqrt(batches.batch_size * m)
            blocks.append(scale * jnp.moveaxis(mixed, 0, 1).reshape(y.shape[0], -1))
        diffusion = jnp.sqrt(self.lr) * jnp.concatenate(blocks, axis=1)
        return jax.vmap(objective.precondition, in_axes=1, out_axes=1)(diffusion)


def sde_defaults(noise, solver, controller, rtol, atol, dt0, t1, brownian_tol):
    """Euler–Maruyama at the constant step `dt0` unless told otherwise, and the
    Brownian tree's tolerance."""
    if not isinstance(noise, AbstractNoise):
        raise TypeError(
            "`noise` must be a flowgap.dynamics.AbstractNoise (e.g. MinibatchNoise), "
            f"got {type(noise).__name__}."
        )
    if controller is None and rtol is None and atol is None:
        if dt0 is None:
            raise ValueError(
                "a flow with `noise` runs Euler–Maruyama at a constant step by "
                "default: give `dt0` (or an adaptive `stepsize_controller` with an "
                "SDE solver that estimates its error)."
            )
        controller = diffrax.ConstantStepSize()
    solver = diffrax.Euler() if solver is None else solver
    if brownian_tol is None:
        brownian_tol = dt0 / 16 if dt0 is not None else t1 * 2.0**-20
    return solver, controller, positive_scalar("brownian_tol", brownian_tol)
