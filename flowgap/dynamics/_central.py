r"""The central flow of gradient descent at the edge of stability (Cohen, Damian,
Talwalkar, Kolter & Lee, "Understanding Optimization in Deep Learning with Central
Flows", ICLR 2025), as a field on the flow engine.

Past η·λ_max = 2, GD with step η and rates P oscillates along the top eigen-
vectors of P^½HP^½; its time average follows, on the clock t = kη,

$$\dot\theta = -P\Big[\nabla L(\theta)
  + \tfrac12\nabla_\theta\langle\Sigma, \nabla^2L(\theta)\rangle\Big],
  \qquad \Sigma = UXU^\top,\; X \succeq 0\ (k\times k),$$

with U = P^½W, W the top-k eigenvectors of P^½HP^½ (Lanczos on Hessian–vector
products). Write R_ab = u_aᵀHu_b (= diag of the top Ritz values at θ) and
g_ab = ∇_θ(u_aᵀ∇²L(θ)u_b) at fixed u (a gradient of a jvp of the gradient), so
½∇⟨Σ, H⟩ = ½Σ_ab X_ab g_ab. Along the flow

$$\dot R_{ab} = \langle g_{ab}, \dot\theta\rangle
  = -\alpha'_{ab} - \tfrac12\mathcal B[X]_{ab},\qquad
  \alpha'_{ab} = \langle g_{ab}, P\nabla L\rangle,\quad
  \mathcal B[X]_{ab} = \textstyle\sum_{ij}\langle g_{ab}, Pg_{ij}\rangle X_{ij},$$

and ⟨X, 𝓑[X]⟩ = ‖P^½Σ_ij X_ij g_ij‖² ≥ 0: 𝓑 is PSD. The sharpness must stay
≤ 2/η. Asking d/dt(2/η − R) ⪰ −κ(2/η − R) (Baumgarte stabilisation at rate κ)
and that X acts only where this binds gives the complementarity problem

$$X \succeq 0,\quad A(X) := \kappa(\tfrac2\eta I - R) - \dot R
  = C + \tfrac12\mathcal B[X] \succeq 0,\quad \langle X, A(X)\rangle = 0,
  \qquad C = \kappa(\tfrac2\eta I - R) + \alpha'.$$

A(X) is the gradient of ¼⟨X, 𝓑[X]⟩ + ⟨C, X⟩, so these are the KKT conditions
of that convex QP over X ⪰ 0 (`solve_psd_qp`). Consequences: where C ⪰ 0 (far
below the edge, κ(2/η − R) dominates the sharpening rate −α'), X = 0 exactly
and the field is exactly gradient flow; once a direction is active, its gap
2/η − R decays as e^{−κt}, so R approaches 2/η from below and stays; which
eigenvalues are active is decided by the QP, and the correction
½Σ X_ab g_ab (unique even where X is not) depends continuously on θ, so no
discrete switching stalls the step-size controller. For k = 1, with
S = λ_max and ∇S = g₁₁:

$$\sigma^2 = X_{11} = \max\Big(0,\; -2\,\frac{\langle\nabla S, P\nabla L\rangle
  + \kappa(2/\eta - S)}{\langle\nabla S, P\nabla S\rangle}\Big).$$

**Choice of κ.** The default κ = 1/η closes the gap to the edge by a factor e
per GD step, the time resolution of the central flow itself: the sharpness
settles a distance (sharpening rate)·η below 2/η, the rise of one step. It
adds no stiffness: near the edge the gradient flow already has an eigenvalue
2/η ≥ κ, which bounds an explicit solver's step.

**Lanczos.** Every evaluation runs Lanczos for `lanczos_steps` steps from one
fixed start vector (from `key`). A warm start from the previous evaluation's
eigenvectors is not possible: a Diffrax vector field is a pure function of
(t, θ) and cannot carry state between evaluations (and must not, for the
Runge–Kutta stages and rejected steps to see one field). Exactly degenerate
top eigenvalues are seen once by single-vector Lanczos; nearly degenerate ones
are resolved.

Reverse-mode differentiation through the QP's `lax.while_loop` is not
supported (forward mode is in principle, untested).
"""

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import positive_int, positive_scalar
from ._edge import check_k, run_central, third_derivatives, top_pairs
from ._field import AbstractField
from ._objective import Objective
from ._psd_qp import PSDQPSolution, smat, solve_psd_qp, svec
from ._trajectory import Trajectory


class _Edge(NamedTuple):
    """What one evaluation computes at θ."""

    grad: Float[Array, " D"]  # ∇L
    eigs: Float[Array, " k"]  # top-k Ritz values of P^½HP^½, largest first
    vectors: Float[Array, "D k"]  # U = P^½W
    ghat: Float[Array, "n D"]  # g_ab in svec order, off-diagonals × √2
    qp: PSDQPSolution


def check_lanczos_steps(lanczos_steps, k) -> int:
    steps = positive_int("lanczos_steps", lanczos_steps)
    if steps < k:
        raise ValueError(f"`lanczos_steps` must be at least `k` = {k}, got {steps}.")
    return steps


def edge_diagnostics(edge, value):
    """The aux entries at one θ with L(θ) = `value`; ⟨Σ, H⟩ = ⟨X, UᵀHU⟩ =
    Σ_a X_aa λ_a and tr Σ = ⟨X, UᵀU⟩."""
    X = edge.qp.X
    return dict(
        sharpness=edge.eigs[0],
        eigs=edge.eigs,
        sigma_trace=jnp.sum(X * (edge.vectors.T @ edge.vectors)),
        predicted_loss=value + 0.5 * jnp.diag(X) @ edge.eigs,
        qp_residual=edge.qp.residual,
    )


class CentralFlowField(AbstractField):
    r"""The central flow of GD with step η (see the module docstring):
    dθ/dt = −P[∇L + ½Σ_ab X_ab g_ab], X from the QP that holds the top-k
    eigenvalues of P^½HP^½ at or below 2/η with Baumgarte rate κ.

    Each call costs one gradient, `lanczos_steps` Hessian–vector products
    (capped at D) and k(k+1)/2 third-derivative products g_ab, plus a k×k
    semidefinite QP (closed form for k = 1); `grad_evals_per_call` counts each
    product as one gradient (`central_flow` caps `lanczos_steps` at D first, so
    the count is what runs). `edge(y, objective)` returns the intermediate
    quantities at θ = y.

    **Fields:** `lr` (η > 0, traced), `stabilisation` (κ > 0 in 1/time, traced;
    default 1/η), `key` (the Lanczos start vector's key, traced; default
    `jax.random.key(0)`), `k` (1 to 8, static), `lanczos_steps` (≥ k, static,
    default 20), `rates` (P).
    """

    lr: Float[Array, ""]
    stabilisation: Float[Array, ""]
    key: PRNGKeyArray
    k: int = eqx.field(static=True)
    lanczos_steps: int = eqx.field(static=True)
    rates: PyTree | None = None

    def __init__(
        self,
        lr,
        k: int = 1,
        *,
        stabilisation=None,
        lanczos_steps: int = 20,
        key: PRNGKeyArray | None = None,
        rates=None,
    ):
        self.lr = positive_scalar("lr", lr)
        self.k = check_k(k)
        self.lanczos_steps = check_lanczos_steps(lanczos_steps, self.k)
        if stabilisation is None:
            self.stabilisation = 1 / self.lr
        else:
            self.stabilisation = positive_scalar("stabilisation", stabilisation)
        self.key = jax.random.key(0) if key is None else key
        self.rates = rates

    @property
    def grad_evals_per_call(self) -> int:
        return 1 + self.lanczos_steps + self.k * (self.k + 1) // 2

    def __call__(self, t, y, objective):
        edge = self.edge(y, objective)
        correction = 0.5 * edge.ghat.T @ svec(edge.qp.X)
        return -objective.precondition(edge.grad + correction)

    def edge(self, y: Float[Array, " D"], objective: Objective) -> _Edge:
        r"""∇L, the top-k Ritz pairs, g_ab = ∇(u_aᵀHu_b) and the QP's solution
        at θ = `y`: M_pq = ⟨ĝ_p, Pĝ_q⟩, C = κ(2/η I − R) + α' with
        svec(α') = ĝP∇L, where ĝ_p = g_ab, times √2 when a ≠ b (svec order)."""
        grad = objective.grad(y)
        root = 1.0 if objective.rates is None else jnp.sqrt(objective.rates)
        eigs, rows_u = top_pairs(
            y, objective, root, self.key, self.k, self.lanczos_steps
        )
        ghat = third_derivatives(objective, y, rows_u, self.k)
        pg = jax.vmap(objective.precondition)(ghat)
        alpha = ghat @ objective.precondition(grad)
        gap = self.stabilisation * (2 / self.lr - eigs)
        C = jnp.diag(gap) + smat(alpha, self.k)
        return _Edge(grad, eigs, rows_u.T, ghat, solve_psd_qp(ghat @ pg.T, C))

    def diagnostics(self, y: Float[Array, " D"], objective: Objective) -> dict:
        """The `aux` entries of `central_flow` at θ = `y`."""
        return edge_diagnostics(self.edge(y, objective), objective(y))


def central_flow(
    loss,
    model,
    *,
    lr,
    t1,
    ts=None,
    k: int = 1,
    stabilisation=None,
    lanczos_steps: int = 20,
    key: PRNGKeyArray | None = None,
    rates=None,
    **kwargs,
) -> Trajectory:
    r"""`gradient_flow(loss, model, field=CentralFlowField(lr, k, ...), ...)`:
    the central flow of gradient descent with step `lr` (η), on GD's clock
    t = k·η, holding up to `k` eigenvalues of P^½HP^½ at the edge 2/η.

    **Arguments:** `loss`, `model`, `t1`, `ts` and every other keyword as for
    `gradient_flow`; `lr` (η > 0, traced); `k` (1 to 8, at most D); `stabilisation`
    (κ > 0 in 1/time, default 1/η; see the module docstring); `lanczos_steps`
    (capped at D, default 20); `key` (the Lanczos start vector); `rates` (P).

    **Returns:** a `Trajectory`, whose `aux` holds, at every save:
    `sharpness` (λ_max(P^½HP^½), shape (S,)), `eigs` (the top-k Ritz values,
    largest first, (S, k)), `sigma_trace` (tr Σ), `predicted_loss`
    (L + ½⟨Σ, H⟩, GD's time-averaged loss), and `qp_residual` (the QP's
    relative KKT residual; of order one flags an unbounded QP: an eigenvalue
    past 2/η that the third derivative cannot bring back, where GD diverges).
    Computed after the solve from the saved θ. RMSProp's central flow, with its
    state ν, is `rmsprop_central_flow`.
    """
    traj, _, aux = run_central(
        "central_flow",
        loss,
        model,
        lambda steps: CentralFlowField(
            lr,
            k,
            stabilisation=stabilisation,
            lanczos_steps=steps,
            key=key,
            rates=rates,
        ),
        k=k,
        lanczos_steps=lanczos_steps,
        t1=t1,
        ts=ts,
        kwargs=kwargs,
    )
    return dataclasses.replace(traj, aux=aux)
