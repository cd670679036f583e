r"""The central flow of RMSProp at the edge of stability (Cohen, Damian,
Talwalkar, Kolter & Lee, ICLR 2025), on the flow engine with state (θ, ν).

RMSProp (`_rmsprop.py`) is GD with the moving rates P(ν) = 1/(√ν + ε). Its
step is stable while the top eigenvalues of P^½HP^½ stay ≤ 2/η; past that it
oscillates along the top eigenvectors, and its time average follows, on the
clock t = kη, with ρ = (1 − b₂)/η,

$$\dot\theta = -P(\nu)\Big[\nabla L + \tfrac12\nabla_\theta\langle\Sigma,
  \nabla^2L\rangle\Big],\qquad
  \dot\nu = \rho\Big(\nabla L^{2} + \big(\tfrac2\eta\big)^2
  \operatorname{diag}\big(P^{-1}\Sigma P^{-1}\big) - \nu\Big),$$

Σ = UXUᵀ, X ⪰ 0 (k×k), U = P^½W, W the top-k eigenvectors of P^½HP^½.

**Why (2/η)P⁻¹ and not H.** ν averages the squared gradient over the
oscillation: ∇L(θ̄ ± δ) = ∇L(θ̄) ± Hδ, so E[g²] = ∇L² + diag(HΣH). In a
period-two oscillation the step itself fixes the gradient's swing: θ_{k+1} −
θ_k = −ηP g_k = ∓2δ gives g's oscillating part (2/η)P⁻¹δ exactly, which is
Hδ on the edge (Hu = λP⁻¹u, λ = 2/η) — and where X > 0, λ is on the edge.
This form makes the QP below convex. For scalar ν, diag(·) is the trace and
∇L² is ‖∇L‖².

**The edge condition** is on the matrix, at fixed U,

$$G(\theta, \nu) = U^\top\Big(\tfrac2\eta P(\nu)^{-1} - \nabla^2L(\theta)\Big)U
  \succeq 0,\qquad G = \tfrac2\eta I - \Lambda\ \text{now},$$

whose rate has two parts: the θ-part −⟨g_ab, θ̇⟩ of the GD central flow
(`CentralFlowField`), and the ν-part (2/η)⟨u_a ⊙ u_b, ν̇/(2√ν)⟩, since
P⁻¹ = √ν + ε. Both are affine in X: in svec coordinates, with ĝ_p = g_ab,
m̂_p = u_a ⊙ u_b (summed over θ for scalar ν), ℓ_p = (2/η)m̂_p/(2√ν) and
o_p = ρ(2/η)²m̂_p/P² (ν̇ per unit svec(X)),

$$\dot G = \alpha + \tfrac12(M + 2N)x,\quad
  \alpha_q = \langle\hat g_q, P\nabla L\rangle
  + \langle\ell_q, \rho(\nabla L^2 - \nu)\rangle,\quad
  M_{qp} = \langle\hat g_q, P\hat g_p\rangle,\quad
  N_{qp} = \langle\ell_q, o_p\rangle.$$

N is a Gram matrix with the positive weights ρ(2/η)³/(2√νP²), so M + 2N is
PSD and, as for GD, the Baumgarte complementarity X ⪰ 0,
A = κG + Ġ ⪰ 0, ⟨X, A⟩ = 0 is the convex QP
min_{X⪰0} ¼⟨X, (M + 2N)[X]⟩ + ⟨C, X⟩, C = κ(2/η I − Λ) + α (`solve_psd_qp`).
Both mechanisms of self-stabilisation are in it: the third derivative (M)
flattens H, and the oscillation's gradients raise ν (N), which lowers P.
Where C ⪰ 0, X = 0 exactly and the field is `RMSPropField`'s.

ν must stay positive (the rate of P⁻¹ has 1/√ν); it does from ν₀ > 0, since
ν̇ ≥ −ρν.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import positive_scalar
from ._central import check_lanczos_steps, edge_diagnostics
from ._edge import check_k, pairs, run_central, third_derivatives, top_pairs
from ._objective import Objective
from ._psd_qp import PSDQPSolution, smat, solve_psd_qp, svec
from ._rmsprop import (
    AbstractRMSPropField,
    check_b2,
    check_eps,
    check_nu0,
    check_scalar,
    with_nu,
)
from ._trajectory import Trajectory


class _Edge(NamedTuple):
    """What one evaluation computes at (θ, ν)."""

    grad: Float[Array, " D"]  # ∇L
    rates: Float[Array, " n"]  # P(ν), length D, or 1 for scalar ν
    drift: Float[Array, " n"]  # ρ(∇L² − ν), the stable ν̇
    eigs: Float[Array, " k"]  # top-k Ritz values of P^½HP^½, largest first
    vectors: Float[Array, "D k"]  # U = P^½W
    ghat: Float[Array, "p D"]  # g_ab in svec order, off-diagonals × √2
    swing: Float[Array, "p n"]  # o_p: ν̇ per unit svec(X)
    qp: PSDQPSolution


class RMSPropCentralFlowField(AbstractRMSPropField):
    r"""The central flow of RMSProp with step η (see the module docstring), on
    y = [θ; ν]: θ̇ = −P(ν)[∇L + ½Σ_ab X_ab g_ab], ν̇ = ρ(∇L² + (2/η)²
    diag(P⁻¹ΣP⁻¹) − ν), X from the QP that holds the top-k eigenvalues of
    P(ν)^½HP(ν)^½ at or below 2/η with Baumgarte rate κ.

    Each call costs what `CentralFlowField`'s does (one gradient,
    `lanczos_steps` Hessian–vector products, k(k+1)/2 third-derivative
    products and a k×k QP). `edge(y, objective)` returns the intermediate
    quantities.

    **Fields:** `lr` (η > 0), `b2` (b₂ ∈ [0, 1)), `eps` (ε ≥ 0),
    `stabilisation` (κ > 0 in 1/time, default 1/η), `key` (Lanczos), all
    traced; `nu0` (ν₀, as for `RMSPropField`, here > 0); `k` (1 to 8),
    `lanczos_steps` (≥ k, default 20), `scalar` (scalar ν), static.
    """

    lr: Float[Array, ""]
    b2: Float[Array, ""]
    eps: Float[Array, ""]
    stabilisation: Float[Array, ""]
    key: PRNGKeyArray
    nu0: PyTree | None
    k: int = eqx.field(static=True)
    lanczos_steps: int = eqx.field(static=True)
    scalar: bool = eqx.field(static=True)
    rates: None = None

    def __init__(
        self,
        lr,
        b2,
        k: int = 1,
        *,
        eps=1e-8,
        nu0=None,
        scalar: bool = False,
        stabilisation=None,
        lanczos_steps: int = 20,
        key: PRNGKeyArray | None = None,
    ):
        self.lr = positive_scalar("lr", lr)
        self.b2 = check_b2(b2)
        self.eps = check_eps(eps)
        self.scalar = check_scalar(scalar)
        self.nu0 = check_nu0(nu0, self.scalar)
        self.k = check_k(k)
        self.lanczos_steps = check_lanczos_steps(lanczos_steps, self.k)
        if stabilisation is None:
            self.stabilisation = 1 / self.lr
        else:
            self.stabilisation = positive_scalar("stabilisation", stabilisation)
        self.key = jax.random.key(0) if key is None else key

    @property
    def grad_evals_per_call(self) -> int:
        return 1 + self.lanczos_steps + self.k * (self.k + 1) // 2

    def start(self, y0, objective):
        return jnp.concatenate([y0, self.initial_nu(y0, objective, positive=True)])

    def __call__(self, t, y, objective):
        edge = self.edge(y, objective)
        x = svec(edge.qp.X)
        dtheta = -(edge.rates * (edge.grad + 0.5 * edge.ghat.T @ x))
        return jnp.concatenate([dtheta, edge.drift + edge.swing.T @ x])

    def edge(self, y: Float[Array, " N"], objective: Objective) -> _Edge:
        r"""∇L, P, the stable ν̇, the top-k Ritz pairs, ĝ, o and the QP's
        solution at y = [θ; ν] (module docstring)."""
        theta, nu = self.split(y, objective)
        grad = objective.grad(theta)
        p = self.rates_of(nu)
        drift = self.drift(grad, nu)
        eigs, rows_u = top_pairs(
            theta, objective, jnp.sqrt(p), self.key, self.k, self.lanczos_steps
        )
        ghat = third_derivatives(objective, theta, rows_u, self.k)
        rows, cols, scale = pairs(self.k)
        products = self.reduce(rows_u[rows] * rows_u[cols]) * scale[:, None]
        edge = 2 / self.lr
        lift = edge * products / (2 * jnp.sqrt(nu))  # ℓ_p = ∂svec(G)_p/∂ν
        swing = self.nu_rate * edge**2 * products / p**2  # o_p
        M = ghat @ (p * ghat).T + 2 * lift @ swing.T
        alpha = ghat @ (p * grad) + lift @ drift
        C = jnp.diag(self.stabilisation * (edge - eigs)) + smat(alpha, self.k)
        qp = solve_psd_qp(M, C)
        return _Edge(grad, p, drift, eigs, rows_u.T, ghat, swing, qp)

    def diagnostics(self, y: Float[Array, " N"], objective: Objective) -> dict:
        """The `aux` entries of `rmsprop_central_flow` at y = [θ; ν]."""
        theta, _ = self.split(y, objective)
        return edge_diagnostics(self.edge(y, objective), objective(theta))


def rmsprop_central_flow(
    loss,
    model,
    *,
    lr,
    b2,
    t1,
    ts=None,
    k: int = 1,
    eps=1e-8,
    nu0=None,
    scalar: bool = False,
    stabilisation=None,
    lanczos_steps: int = 20,
    key: PRNGKeyArray | None = None,
    **kwargs,
) -> Trajectory:
    r"""`gradient_flow(loss, model, field=RMSPropCentralFlowField(lr, b2, k,
    ...), ...)`: the central flow of RMSProp with step `lr` (η), on RMSProp's
    clock t = k·η, holding up to `k` eigenvalues of P(ν)^½HP(ν)^½ at 2/η.

    A function of its own rather than an `optimizer=` switch of `central_flow`:
    its flow has its own state (ν) and settings (b₂, ε, ν₀, scalar ν), as
    `momentum_flow` has beside `modified_flow`; `rmsprop_flow` is its stable
    counterpart, and `gradient_descent(..., optimizer=functools.partial(
    rmsprop_optimizer, b2=b2, eps=eps, nu0=nu0, scalar=scalar))` the discrete
    RMSProp it models.

    **Arguments:** `lr`, `b2`, `eps`, `nu0`, `scalar` as for `RMSPropField`
    (ν₀ > 0); `k`, `stabilisation`, `lanczos_steps`, `key` as for
    `central_flow`; `loss`, `model`, `t1`, `ts` and every other keyword as for
    `gradient_flow` (not `field`, nor `rates`).

    **Returns:** a `Trajectory` whose `aux` holds, at every save, `sharpness`
    (λ_max(P(ν)^½HP(ν)^½)), `eigs`, `sigma_trace` (tr Σ), `predicted_loss`
    (L + ½⟨Σ, H⟩, RMSProp's time-averaged loss) and `qp_residual`, as for
    `central_flow`, and `nu` (ν, shape (S, D), or (S,) for scalar ν).
    """
    traj, field, aux = run_central(
        "rmsprop_central_flow",
        loss,
        model,
        lambda steps: RMSPropCentralFlowField(
            lr,
            b2,
            k,
            eps=eps,
            nu0=nu0,
            scalar=scalar,
            stabilisation=stabilisation,
            lanczos_steps=steps,
            key=key,
        ),
        k=k,
        lanczos_steps=lanczos_steps,
        t1=t1,
        ts=ts,
        kwargs=kwargs,
    )
    return with_nu(traj, field.scalar, aux)
