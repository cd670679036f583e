import jax

from .._checks import positive_scalar
from ._flow import gradient_field, integrate


def _tree_axpy(a, x, y):
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def modified_field(order: int):
    r"""The backward-error ("modified equation") field of gradient descent.

    GD is explicit Euler with step η on f(θ) = −P∇L(θ). Its modified equation
    (Hairer, Lubich & Wanner, *Geometric Numerical Integration*, §IX.1) is

    $$\tilde f = f - \frac{\eta}{2} f'f
      + \eta^2\Big(\frac{1}{12} f''(f, f) + \frac{1}{3} f'f'f\Big) + O(\eta^3),$$

    which for P = I is −g − (η/2)Hg − η²[(1/3)H²g + (1/12)∇³L[g, g]]
    (science.md §1). f'v is a jvp of the gradient (a Hessian-vector product) and
    f''(v, v) a jvp of a jvp; no Hessian is formed.
    """

    def make(loss, static, rates, lr):
        f = gradient_field(loss, static, rates)

        def field(params):
            fx = f(params)
            jf = jax.jvp(f, (params,), (fx,))[1]  # f'f
            out = _tree_axpy(-0.5 * lr, jf, fx)
            if order == 2:
                jjf = jax.jvp(f, (params,), (jf,))[1]  # f'f'f
                second = jax.jvp(
                    lambda p: jax.jvp(f, (p,), (fx,))[1], (params,), (fx,)
                )[1]  # f''(f, f), direction held at f(θ)
                out = _tree_axpy(lr**2 / 12, second, out)
                out = _tree_axpy(lr**2 / 3, jjf, out)
            return out

        return field

    return make


_FIELDS = {1: modified_field(1), 2: modified_field(2)}


def modified_flow(
    loss,
    model,
    *,
    lr,
    order: int = 1,
    t1,
    ts=None,
    solver=None,
    rtol=1e-8,
    atol=1e-10,
    max_steps: int = 100_000,
    dt0=None,
    rates=None,
    stop_when=None,
    adjoint=None,
    throw: bool = False,
    progress: bool = False,
    dense: bool = False,
):
    r"""The order-1 or order-2 modified flow of gradient descent with step `lr`,
    solved with Diffrax like `gradient_flow` (same keyword arguments).

    - order 1: dθ/dt = f − (η/2)f'f, i.e. for P = I the gradient flow of
      L̃₁ = L + (η/4)‖∇L‖² (Barrett & Dherin 2021); GD stays O(η²) close to it.
    - order 2: adds η²[(1/12)f''(f, f) + (1/3)f'f'f]; GD stays O(η³) close.

    with f = −P∇L (see `modified_field`). `lr` is traced: a new value never
    recompiles, and the solve is differentiable in it (as in the initial model,
    `rates` and the loss's data): `jax.grad` through the `adjoint` (default
    `RecursiveCheckpointAdjoint`), `jax.jvp`/`jax.jacfwd` through
    `diffrax.ForwardMode`, picked automatically (see `gradient_flow`). GD at
    step `lr` and this flow share the clock t = k·lr.

    **Returns:** a `Trajectory`, as from `gradient_flow`.
    """
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
    lr = positive_scalar("lr", lr)
    return integrate(
        loss,
        model,
        t1=t1,
        ts=ts,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        dt0=dt0,
        rates=rates,
        stop_when=stop_when,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        lr=lr,
        make_field=_FIELDS[order],
        dense=dense,
    )
