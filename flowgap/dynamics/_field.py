"""Vector fields of the flows: what `gradient_flow` integrates."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PyTree

from ._objective import Objective


class AbstractField(eqx.Module):
    r"""A vector field dθ/dt = F(t, θ) on the flat trainable vector θ ∈ ℝᴰ
    (or dy/dt = F(t, y) on y = [θ; s], with extra state s: see below).

    `gradient_flow(loss, model, field=...)` integrates it with Diffrax; the
    gradient flow, the modified flows of gradient descent and heavy ball's flows
    are instances (`GradientField`, `ModifiedField`, `MomentumField`). A new
    continuous-time model is a new subclass, which gets the engine's solvers,
    step-size control, saves, stop events, adjoints and statuses as they are:

    ```python
    class DecayedGradient(flowgap.dynamics.AbstractField):
        decay: float                       # dθ/dt = −∇L(θ) − λθ
        rates: None = None
        grad_evals_per_call = 1

        def __call__(self, t, y, objective):
            return -objective.grad(y) - self.decay * y
    ```

    **Interface:**

    - `__call__(t, y, objective)`: F at time t and θ = `y` (shape (D,)), with
      `objective` an `Objective` (L, ∇L, Hessian–vector products and P on the
      flat vector). Numbers that a sweep varies (a learning rate) should be
      array fields, so they are traced and never recompile.
    - `rates`: P, the per-parameter rate multipliers (a positive scalar, a pytree
      shaped like the model, or None); the engine hands it to F flattened, as
      `objective.rates`, and fields apply it with `objective.precondition`.
    - `grad_evals_per_call`: loss-gradient evaluations per call (a Hessian– or
      higher-derivative–vector product counts as one), for the flow's
      `stats["num_grad_evals"]`.
    - `start(y0, objective)`: the flow's initial state for the model's θ₀
      (θ₀ itself unless the continuous model starts elsewhere).

    **Extra state.** A flow may carry state besides θ (an optimizer's moving
    averages, as `RMSPropField`'s ν): `start` then returns y = [θ; s], longer
    than D, θ first, and `__call__` receives that whole y and returns its whole
    derivative [dθ/dt; ds/dt]. The engine reads the model, the losses, the stop
    events and `traj.at` from θ = y[:D] alone, and saves s at every save as
    `traj.aux["state"]`, shape (S, len(s)). `rates` applies to θ only.
    """

    rates: eqx.AbstractVar[PyTree | None]
    grad_evals_per_call: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self, t: Float[Array, ""], y: Float[Array, " N"], objective: Objective
    ) -> Float[Array, " N"]:
        raise NotImplementedError

    def start(self, y0: Float[Array, " D"], objective: Objective) -> Float[Array, " N"]:
        return y0


class GradientField(AbstractField):
    r"""The gradient flow, F(θ) = −P∇L(θ).

    Gradient descent θ_{k+1} = θ_k − ηP∇L(θ_k) is its explicit Euler method with
    step η, on the clock t = kη (see the theory pages: "One clock").
    """

    rates: PyTree | None = None
    grad_evals_per_call = 1

    def __call__(self, t, y, objective):
        return -objective.precondition(objective.grad(y))
