r"""The plateau-skipping trainer's jumps: the probe that reads a saddle's
coefficient matrix C, the three jump rules (a fixed size along C's top singular
pair, its line-searched size, the whitened rank-one minimiser), the landing
through the model's `add_unit` hook, and the Newton–CG stage that converges a
landing onto the next saddle where a jump cannot land on it (tanh nets; docs:
theory/saddle-to-saddle)."""

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from ..models import model_method
from ..models._protocol import class_path


class Probe(eqx.Module):
    """x ↦ f(x) + E·x: the model plus a linear map E, to read ∂L/∂E."""

    model: eqx.Module
    linear: jax.Array

    def __call__(self, x):
        return self.model(x) + self.linear @ x


def architecture(model):
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


@eqx.filter_jit
def line_search_size(loss, model, direction):
    r"""ε* = −L'(0)/L''(0) for φ(ε) = L(f + ε·D·x), D = u₁v₁ᵀ: the minimiser of
    the quadratic model of the loss along the jump (exact for a linear net under
    half-MSE). One Hessian-vector product (a jvp of a gradient)."""
    grad = jax.grad(lambda e: loss(Probe(model, e * direction)))
    zero = jnp.zeros((), direction.dtype)
    slope, curvature = jax.jvp(grad, (zero,), (jnp.ones_like(zero),))
    return -slope / curvature


@eqx.filter_jit
def saddle_probe(loss, model, slope, shape):
    r"""(L, C, ‖∇θL‖) at `model`, with C = −σ'(0)·∂L/∂E at E = 0 for f(x) + E·x:
    one gradient evaluation, with respect to θ and E together (L comes with it)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    probe = jnp.zeros(shape, jnp.result_type(*jax.tree.leaves(params)))
    value, (grad, coefficient) = jax.value_and_grad(
        lambda p, e: loss(Probe(eqx.combine(p, static), e)), argnums=(0, 1)
    )(params, probe)
    return value, -slope * coefficient, optax.tree.norm(grad)


@eqx.filter_jit
def land(model, unit, left, right, size):
    """The model with unit `unit` set by `add_unit` (compiled: on a small net the
    dispatches, not the arithmetic, cost the time)."""
    with jax.ensure_compile_time_eval():  # hooks may read σ'(0) as a float
        return model_method(model, "add_unit")(unit, left, right, size)


zero_model = eqx.filter_jit(
    lambda model: jax.tree.map(
        lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else x, model
    )
)


_UNITS = {}


def units_of(model):
    """`architecture(model)`, kept per model structure (the hooks read σ'(0)
    eagerly, which costs more than a whole skipped plateau on a small net)."""
    leaves, treedef = jax.tree.flatten(model)
    key = (
        treedef,
        tuple((x.shape, x.dtype) if eqx.is_array(x) else x for x in leaves),
    )
    try:
        if key not in _UNITS:
            _UNITS[key] = architecture(model)
        return _UNITS[key]
    except TypeError:  # an unhashable leaf or static field: no cache
        return architecture(model)


def conjugate_gradients(apply, rhs, rtol, max_steps):
    r"""Solve H[z] = b for a symmetric positive definite H given as products,
    from z = 0 (so the first residual costs no product), until ‖r‖ ≤ rtol·‖b‖ or
    `max_steps` products. In exact arithmetic it ends after as many products as
    H has distinct eigenvalues on the Krylov space of b.

    **Returns:** (z, the number of products).
    """
    floor = rtol**2 * jnp.vdot(rhs, rhs)

    def more(state):
        return (state[3] > floor) & (state[4] < max_steps)

    def step(state):
        z, r, p, rr, k = state
        hp = apply(p)
        a = rr / jnp.vdot(p, hp)
        r = r - a * hp
        new = jnp.vdot(r, r)
        return z + a * p, r, r + (new / rr) * p, new, k + 1

    start = (jnp.zeros_like(rhs), rhs, rhs, jnp.vdot(rhs, rhs), 0)
    z, *_, products = jax.lax.while_loop(more, step, start)
    return z, products


@eqx.filter_jit
def whitened_jump(loss, model, coefficient, slope, rtol):
    r"""The rank-one jump E = u vᵀ minimising the quadratic model of
    E ↦ L(f + E·x) at the saddle.

    For a half mean-squared error the model is exact: with G = C/σ'(0) = −∂L/∂E
    and the probe Hessian H[E] = EΣ (Σ = XᵀX/n, read only through
    Hessian-vector products), L(E) = L − ⟨G, E⟩ + ½⟨E, EΣ⟩. Its unconstrained
    minimiser is the Newton step Z = GΣ⁻¹ (conjugate gradients on H). Over rank
    one, v = Σ⁻¹Gᵀu = Zᵀu for ‖u‖ = 1 and the model falls by ½uᵀZGᵀu, so u is
    the top eigenvector of ZGᵀ = GΣ⁻¹Gᵀ: the top left singular vector of the
    *whitened* coefficient matrix GΣ^{−1/2}. For a linear net this lands on the
    next saddle exactly (reduced-rank regression nests: W_r = W_{r−1} + u vᵀ).

    **Returns:** (u, v/‖v‖, ‖v‖, the number of Hessian-vector products).
    """
    target = coefficient / slope
    grad = jax.grad(lambda e: loss(Probe(model, e)))
    zero = jnp.zeros_like(target)
    newton, products = conjugate_gradients(
        lambda d: jax.jvp(grad, (zero,), (d,))[1], target, rtol, target.size
    )
    gram = newton @ target.T
    _, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
    left = vectors[:, -1]
    right = newton.T @ left
    size = jnp.linalg.norm(right)
    return left, right / size, size, products


def jump_piece(rule, loss, model, coefficient, slope, jump, log):
    """(left, right, size) of the rank-one piece a round adds, by `rule`; the
    Hessian-vector products it takes are logged."""
    left, _, right = np.linalg.svd(coefficient, full_matrices=False)
    left, right = left[:, 0], right[0]
    if rule == "whiten":
        # below float64's round-off floor a CG residual stops shrinking
        rtol = 1e2 * float(np.finfo(coefficient.dtype).eps)
        *pieces, products = whitened_jump(loss, model, coefficient, slope, rtol)
        log.products(int(products))
        return pieces
    if rule == "line_search":
        direction = jnp.outer(left, right)
        best = float(line_search_size(loss, model, slope * direction))
        log.products(1)
        return left, right, best if np.isfinite(best) and best > 0 else jump
    return left, right, jump


def truncated_cg(apply, rhs, rtol, max_steps):
    r"""Steihaug's truncated conjugate gradients for H[z] = b, H symmetric but
    possibly indefinite (given as products), from z = 0: it stops at
    ‖r‖ ≤ rtol·‖b‖, after `max_steps` products, or at the first direction p
    with pᵀHp ≤ 0, returning the iterate so far (b itself if that is the
    first). Every iterate z has bᵀz > 0, so −z is a descent direction for a
    gradient b.

    **Returns:** (z, the number of products).
    """
    floor = rtol**2 * jnp.vdot(rhs, rhs)

    def more(state):
        return (state[3] > floor) & (state[4] < max_steps) & ~state[5]

    def step(state):
        z, r, p, rr, k, _ = state
        hp = apply(p)
        curvature = jnp.vdot(p, hp)
        negative = curvature <= 0
        a = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, curvature))
        r = r - a * hp
        new = jnp.where(negative, rr, jnp.vdot(r, r))
        z = jnp.where(negative & (k == 0), rhs, z + a * p)
        return z, r, r + (new / rr) * p, new, k + 1, negative

    start = (jnp.zeros_like(rhs), rhs, rhs, jnp.vdot(rhs, rhs), 0, False)
    z, *_, products, _ = jax.lax.while_loop(more, step, start)
    return z, products


@eqx.filter_jit
def newton_stage(loss, model, grad_tol, loss_tol, max_iters):
    r"""A loss-decrease stage by truncated Newton–CG: from `model`, repeat
    θ ← θ − t·z with z ≈ H⁻¹∇L (`truncated_cg` on Hessian-vector products, to a
    relative residual min(½, √‖∇L‖), the Eisenstat–Walker forcing that gives
    superlinear convergence) and t = 2^{−j} the first halving with
    L(θ − t z) ≤ L − 10⁻⁴·t·∇Lᵀz (Armijo), until ‖∇L‖ < `grad_tol` or
    L < `loss_tol`. Monotone in L, so from a landing below the previous saddle
    it cannot climb back to it. Unused units of a `TwoLayer` or `DeepLinear`
    stay exactly zero: their gradient and their Hessian block with the used
    units vanish, so no Krylov vector touches them.

    **Returns:** (model, L, ‖∇L‖, counts) with counts = (iterations, gradients
    (one at the start and one per iteration), Hessian-vector products, lone
    loss evaluations of the line search, converged).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def objective(x):
        return loss(eqx.combine(unravel(x), static))

    gradient = jax.grad(objective)
    value, grad = jax.value_and_grad(objective)(flat)

    def more(state):
        _, value, grad, it, *_ = state
        return (
            (jnp.linalg.norm(grad) >= grad_tol) & (value >= loss_tol) & (it < max_iters)
        )

    def step(state):
        x, value, grad, it, grads, hvps, losses = state
        norm = jnp.linalg.norm(grad)
        z, products = truncated_cg(
            lambda d: jax.jvp(gradient, (x,), (d,))[1],
            grad,
            jnp.minimum(0.5, jnp.sqrt(norm)),
            x.size,
        )
        drop = 1e-4 * jnp.vdot(grad, z)

        def shorter(search):
            t, _, tried = search
            return t * 0.5, objective(x - 0.5 * t * z), tried + 1

        def rejected(search):
            t, trial, tried = search
            return (trial > value - t * drop) & (tried < 60)

        t, _, tried = jax.lax.while_loop(rejected, shorter, (1.0, objective(x - z), 1))
        x = x - t * z
        value, grad = jax.value_and_grad(objective)(x)
        return x, value, grad, it + 1, grads + 1, hvps + products, losses + tried

    start = (flat, value, grad, 0, 1, 0, 0)  # the stage's first gradient
    x, value, grad, it, grads, hvps, losses = jax.lax.while_loop(more, step, start)
    done = (jnp.linalg.norm(grad) < grad_tol) | (value < loss_tol)
    model = eqx.combine(unravel(x), static)
    return model, value, jnp.linalg.norm(grad), (it, grads, hvps, losses, done)
