r"""The weak-error exponents of gradient flow and of SGD's SDEs against SGD:
the stochastic counterpart of `gap_exponent` (docs: theory/sgd)."""

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PyTree

from .. import dynamics
from .._checks import positive_int, prng_key
from .._precision import attainable_tolerances, params_dtype
from ._gap import _check_ladder
from ._weak import WeakErrorTable, monte_carlo, weak_error_exponent

_NAMES = {0: "gradient flow", 1: "SDE order 1", 2: "SDE order 2"}


class _SGDSample(eqx.Module):
    """key ↦ φ(θ_K) of SGD: a module, so η and the data are traced."""

    loss: Callable
    model: PyTree
    data: PyTree
    observable: Callable
    lr: Array
    steps: int = eqx.field(static=True)
    sampling: tuple = eqx.field(static=True)

    def __call__(self, key):
        traj = dynamics.stochastic_descent(
            self.loss,
            self.model,
            self.data,
            lr=self.lr,
            steps=self.steps,
            save_every=self.steps,
            key=key,
            **dict(self.sampling),
        )
        return self.observable(traj.final)


class _SDESample(eqx.Module):
    """key ↦ φ(X_T) of the SDE by Euler–Maruyama at dt = η/substeps, or with
    `extrapolate` 2φ(X^{dt/2}) − φ(X^{dt}) on one Brownian path (one
    `brownian_tol`), which cancels the solver's O(dt) weak error. η is traced:
    one compilation serves the whole ladder."""

    loss: Callable
    model: PyTree
    data: PyTree
    observable: Callable
    lr: Array
    t1: float = eqx.field(static=True)
    order: int = eqx.field(static=True)
    substeps: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    extrapolate: bool = eqx.field(static=True)
    sampling: tuple = eqx.field(static=True)

    def solve(self, key, dt):
        traj = dynamics.stochastic_flow(
            self.loss,
            self.model,
            self.data,
            lr=self.lr,
            t1=self.t1,
            key=key,
            order=self.order,
            dt0=dt,
            brownian_tol=self.lr / (64 * self.substeps),
            max_steps=self.max_steps,
            **dict(self.sampling),
        )
        return self.observable(traj.final)

    def __call__(self, key):
        dt = self.lr / self.substeps
        coarse = self.solve(key, dt)
        if not self.extrapolate:
            return coarse
        fine = self.solve(key, dt / 2)
        return jax.tree.map(lambda f, c: 2 * f - c, fine, coarse)


def _flow_value(loss, model, data, observable, t1):
    """φ(θ_GF(T)), solved at 1e-12 with Dopri8: exact next to Monte Carlo
    (in a coarser dtype, at the floor it can meet, 100·ε)."""
    rtol, atol = attainable_tolerances(1e-12, 1e-12, params_dtype(model))
    traj = dynamics.gradient_flow(
        lambda m: loss(m, data),
        model,
        t1=t1,
        solver=diffrax.Dopri8(),
        rtol=rtol,
        atol=atol,
        throw=True,
    )
    return observable(traj.final)


def sgd_weak_exponent(
    loss,
    model,
    data,
    *,
    observable: Callable,
    lrs,
    t1,
    batch_size: int,
    key,
    num_keys: int = 4096,
    orders=(0, 1, 2),
    replace: bool = True,
    label_noise=None,
    substeps: int = 8,
    extrapolate: bool = True,
    batch: int | None = None,
    confidence: float = 0.95,
) -> WeakErrorTable:
    r"""Weak errors of gradient flow (order 0) and of SGD's order-1 and order-2
    SDEs against SGD, at the fixed horizon T = `t1`, with fitted exponents in η.

    For each η in `lrs` (each must divide T), SGD runs T/η steps from `model`
    over `num_keys` keys, and each model is run to T:

    $$e(\eta) = \big|\,\mathbb E\,\varphi(\theta^{\text{SGD}}_{T/\eta})
      - \mathbb E\,\varphi(X_T)\big|,$$

    with Monte Carlo error bars. Theory (Li, Tai & E 2017, 2019; docs:
    theory/sgd): e = O(η) for the order-1 SDE and O(η²) for order 2; gradient
    flow is also O(η) for most φ, and wrong by 100% of the effect on φ carried by
    the noise (a covariance).

    The SDEs run Euler–Maruyama at dt = η/`substeps`; with `extrapolate`
    (default), each path is solved at dt and dt/2 on one Brownian path and the
    sample is 2φ(X^{dt/2}) − φ(X^{dt}), which removes the solver's O(dt) weak
    error, so what is measured is the model's. Gradient flow is solved to 1e-12.

    **Arguments:** `loss(model, batch)`, `model`, `data` as in
    `stochastic_descent`; `observable` φ: model → array or pytree (e.g. the full
    loss, or the parameters); `lrs` (≥ 3); `t1` T; `batch_size`, `replace`,
    `label_noise` (the SGD and its SDEs); `key`; `num_keys` per estimate;
    `orders`, a subset of (0, 1, 2); `batch`, keys per vectorised chunk
    (`monte_carlo`'s `batch_size`); `confidence` of the fits' intervals.

    **Returns:** a `WeakErrorTable` (`weak_error_exponent`), with approximations
    named "gradient flow", "SDE order 1", "SDE order 2". Only errors above three
    Monte Carlo standard errors enter the fits.
    """
    if not callable(observable):
        raise TypeError("`observable` must be a callable model -> array(s).")
    if not orders:
        raise ValueError("`orders` must name at least one of 0, 1, 2.")
    key = prng_key("key", key)
    num_keys = positive_int("num_keys", num_keys, minimum=2)
    substeps = positive_int("substeps", substeps)
    lrs, t1, steps = _check_ladder(lrs, t1, orders)
    sampling = (
        ("batch_size", batch_size),
        ("replace", replace),
        ("label_noise", label_noise),
    )
    # the finest step of the ladder bounds every solve's step count
    max_steps = math.ceil(t1 * substeps * 2 / float(np.min(lrs))) + 16
    common = dict(loss=loss, model=model, data=data, observable=observable)
    sgd_key, sde_key = jr.split(key)
    reference, approximations = [], {_NAMES[o]: [] for o in orders}
    # gradient flow does not depend on η: one solve serves the ladder
    flow = _flow_value(loss, model, data, observable, t1) if 0 in orders else None
    for i, (lr, k) in enumerate(zip(lrs, steps)):
        lr = jnp.asarray(lr)
        sgd = _SGDSample(**common, lr=lr, steps=int(round(k)), sampling=sampling)
        keys = (jr.fold_in(sgd_key, i), num_keys)
        reference.append(monte_carlo(sgd, keys, batch_size=batch))
        for order in orders:
            if order == 0:
                value = flow
            else:
                sde = _SDESample(
                    **common,
                    lr=lr,
                    t1=t1,
                    order=order,
                    substeps=substeps,
                    max_steps=max_steps,
                    extrapolate=extrapolate,
                    sampling=sampling,
                )
                keys = (jr.fold_in(sde_key, i), num_keys)
                value = monte_carlo(sde, keys, batch_size=batch)
            approximations[_NAMES[order]].append(value)
    return weak_error_exponent(lrs, reference, approximations, confidence=confidence)
