import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import positive_scalar
from ._common import scalar_loss
from ._flow import gradient_field, integrate
from ._rates import check_rates, precondition


def _check_beta(beta):
    beta = positive_scalar("beta", beta)
    if jnp.ndim(beta) == 0 and not isinstance(beta, jax.core.Tracer):
        if not float(beta) < 1:
            raise ValueError(f"`beta` must lie in (0, 1), got {float(beta)}.")
    return beta


def _momentum_field(loss, static, rates, args):
    lr, beta = args
    f = gradient_field(loss, static, rates)  # −P∇L

    def field(params):
        fx = f(params)
        jf = jax.jvp(f, (params,), (fx,))[1]  # f'f = PHP∇L
        scale = 1 / (1 - beta)
        correction = lr * (1 + beta) / (2 * (1 - beta) ** 3)
        return jax.tree.map(lambda a, b: scale * a - correction * b, fx, jf)

    return field


def _leading_field(loss, static, rates, args):
    lr, beta = args
    f = gradient_field(loss, static, rates)
    return lambda params: jax.tree.map(lambda a: a / (1 - beta), f(params))


def momentum_flow(
    loss,
    model,
    *,
    lr,
    beta,
    order: int = 1,
    t1,
    ts=None,
    solver=None,
    rtol=1e-8,
    atol=1e-10,
    max_steps: int = 100_000,
    rates=None,
    stop_when=None,
    throw: bool = False,
    dense: bool = False,
):
    r"""Continuous-time counterpart of heavy-ball gradient descent, on the clock
    t = k·η.

    Heavy ball as optax writes it (`optax.sgd(η, momentum=β)`, pass
    `optimizer=functools.partial(optax.sgd, momentum=β)` to `gradient_descent`):
    m_{k+1} = βm_k + P∇L(θ_k), θ_{k+1} = θ_k − ηm_{k+1}, m₀ = 0.

    - order 0: dθ/dt = −P∇L/(1 − β) from θ₀ — the η → 0 limit; GD is O(η) from it.
    - order 1: the modified equation on the slow manifold m ≈ M(θ) (Kovachki &
      Stuart 2021),
      dθ/dt = −P∇L/(1 − β) − η(1 + β)/(2(1 − β)³)·PHP∇L,
      started from θ₀ + ηβP∇L(θ₀)/(1 − β)², which accounts for m₀ = 0 being off
      that manifold (the transient m_k − M(θ_k) ∝ βᵏ shifts θ by this much); GD is
      O(η²) from it. Derivation: with M = M₀ + ηM₁, (1 − β)M + M'δ = P∇L gives
      M₀ = P∇L/(1 − β), M₁ = PHP∇L/(1 − β)³, so the step is
      θ − ηP∇L/(1 − β) − η²βPHP∇L/(1 − β)³ + O(η³), whose modified field is the
      one above.

    The second-order (inertial) ODE is not used: on this clock, with β fixed, it
    relaxes to the same first-order dynamics.

    **Returns:** a `Trajectory`, as from `gradient_flow`.
    """
    if order not in (0, 1) or isinstance(order, bool):
        raise ValueError(f"`order` must be 0 or 1, got {order!r}.")
    lr = positive_scalar("lr", lr)
    beta = _check_beta(beta)
    start = model
    if order == 1:
        params, static = eqx.partition(model, eqx.is_inexact_array)
        grads = precondition(
            jax.grad(scalar_loss(loss, static))(params), check_rates(rates, model)
        )
        shift = lr * beta / (1 - beta) ** 2
        start = eqx.combine(
            jax.tree.map(lambda p, g: p + shift * g, params, grads), static
        )
    return integrate(
        loss,
        start,
        t1=t1,
        ts=ts,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        dt0=None,
        rates=rates,
        stop_when=stop_when,
        adjoint=None,
        throw=throw,
        progress=False,
        lr=(lr, beta),
        make_field=_momentum_field if order == 1 else _leading_field,
        dense=dense,
    )
