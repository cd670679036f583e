import inspect
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree


class Sensitivity(eqx.Module):
    """What `sensitivity(fn, wrt)(...)` returns.

    **Fields:**

    - `value`: fn's output at the given arguments.
    - `derivatives`: dict name → ∂value/∂argument. For an array output of shape
      S and an array argument of shape A the entry has shape S + A (a Jacobian;
      a gradient for a scalar output). For a pytree argument (a model, a problem)
      it has the argument's structure, restricted to its floating-point leaves.
    """

    value: PyTree
    derivatives: dict


def _static_error(name: str, value) -> ValueError:
    return ValueError(
        f"`wrt` names `{name}`, which is a static setting here "
        f"({type(value).__name__} {value!r}): it fixes the program's shape or "
        "branches, so it has no derivative. Only floating-point values can be "
        "differentiated: a Python float, a float array, or a pytree with "
        "floating-point array leaves (a model, a problem)."
    )


def differentiable_part(name: str, value):
    """(traced part, static part) of an argument to differentiate; ValueError
    naming it when it has no floating-point part (an int, bool, str, None, an
    integer array: `steps`, `depth`, a solver name…)."""
    if isinstance(value, bool | str | numbers.Integral) or value is None:
        raise _static_error(name, value)
    if isinstance(value, numbers.Real):
        return jnp.asarray(value, dtype=jnp.result_type(float)), None
    if isinstance(value, np.ndarray | jax.Array) and not jnp.issubdtype(
        value.dtype, jnp.inexact
    ):
        raise _static_error(name, value)
    traced, static = eqx.partition(value, eqx.is_inexact_array)
    if not jax.tree.leaves(traced):
        raise _static_error(name, value)
    return traced, static


def _names(wrt, signature) -> tuple[str, ...]:
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"`wrt` must be an argument name or a sequence of names, got {wrt!r}."
        )
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    for name in names:
        if name not in signature.parameters and not accepts_any:
            raise ValueError(
                f"`wrt` names `{name}`, which is not an argument of `fn` "
                f"(arguments: {', '.join(signature.parameters)})."
            )
    return names


def sensitivity(fn, wrt, *, mode: str = "reverse"):
    r"""Derivatives of any outcome of a run with respect to named arguments.

    `fn` is an ordinary function of hyperparameters and data that trains
    something and returns a scalar or array outcome: a final loss, a recovery
    error ‖β(T) − β*‖, the final end-to-end map, an invariant's drift, a gap.
    `sensitivity(fn, wrt=("scale", "lr"))` returns a function with `fn`'s
    signature whose result also carries

    $$\frac{\partial\,\mathrm{fn}(\dots)}{\partial\,\mathrm{arg}}
      \quad\text{for each arg named in } wrt,$$

    computed by JAX through the whole run (gradient descent's checkpointed scans;
    gradient flow's Diffrax adjoint). Arguments not named in `wrt` are passed
    through unchanged (and not differentiated).

    **Arguments:**

    - `fn`: callable returning a JAX array (or pytree of arrays).
    - `wrt`: an argument name or a sequence of names of `fn`. Each must be a
      float, a float array, or a pytree with float leaves (a model: derivative
      w.r.t. its initial parameters; a `RegressionProblem`: w.r.t. its data).
      Naming a static setting (an int such as `steps` or `depth`, a bool, a
      string, None) raises a `ValueError` naming it, at call time.
    - `mode`: "reverse" (`jax.jacrev`; one backward sweep per output entry, best
      for a scalar outcome of many inputs; gradient flow then uses
      `RecursiveCheckpointAdjoint`) or "forward" (`jax.jacfwd`; one pass per
      input entry, best for a few hyperparameters and an array outcome;
      gradient flow then switches to `diffrax.ForwardMode` by itself).

    **Returns:** a function `(*args, **kwargs) -> Sensitivity`.

    **Example:**

    ```python
    def recovery_error(scale, lr, steps):
        model = DiagonalNet(d, scale=scale)
        traj = gradient_descent(problem.loss, model, lr=lr, steps=steps)
        return jnp.linalg.norm(traj.final.end_to_end() - problem.truth)

    out = sensitivity(recovery_error, wrt=("scale", "lr"))(0.1, 0.01, 1000)
    out.derivatives["scale"]  # ∂ error / ∂ α
    ```
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    if mode not in ("reverse", "forward"):
        raise ValueError(f"`mode` must be 'reverse' or 'forward', got {mode!r}.")
    signature = inspect.signature(fn)
    names = _names(wrt, signature)
    jacobian = jax.jacrev if mode == "reverse" else jax.jacfwd

    def evaluate(*args, **kwargs) -> Sensitivity:
        return _differentiate(fn, signature, names, jacobian, args, kwargs)

    return evaluate


def _differentiate(fn, signature, names, jacobian, args, kwargs) -> Sensitivity:
    """`fn(*args, **kwargs)` and its `jacobian` with respect to the floating-point
    parts of the arguments in `names`, their static parts held fixed."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    parts = {name: differentiable_part(name, arguments[name]) for name in names}
    traced = {name: part[0] for name, part in parts.items()}

    def outcome(traced):
        call = signature.bind(*bound.args, **bound.kwargs)
        for name, value in traced.items():
            static = parts[name][1]
            call.arguments[name] = (
                value if static is None else eqx.combine(value, static)
            )
        out = fn(*call.args, **call.kwargs)
        return out, out

    derivatives, value = jacobian(outcome, has_aux=True)(traced)
    return Sensitivity(value=value, derivatives=derivatives)
