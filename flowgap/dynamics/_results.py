import diffrax
import jax
import jax.numpy as jnp


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Run status of a `Trajectory`: Diffrax's result codes plus GD divergence.

    `successful` and `event_occurred` (a `stop_when` condition fired) are normal
    ends; everything else is a failure. Inherited: `max_steps_reached`,
    `dt_min_reached`, `max_steps_rejected`, `internal_error`.
    """

    diverged = (
        "Gradient descent diverged: the loss became non-finite or exceeded `max_loss`."
    )


class DivergenceError(RuntimeError):
    """Raised by `gradient_descent(..., throw=True)` when a run diverges.

    The trajectory up to the divergence is kept on `.trajectory`.
    """

    def __init__(self, message: str, trajectory=None):
        super().__init__(message)
        self.trajectory = trajectory


class SolverError(RuntimeError):
    """Raised by `gradient_flow(..., throw=True)` when the ODE solve fails.

    The trajectory up to the failure time is kept on `.trajectory`.
    """

    def __init__(self, message: str, trajectory=None):
        super().__init__(message)
        self.trajectory = trajectory


def status_code(result) -> "jax.Array":
    """The integer code of a `RESULTS` item (0 = `successful`), traceable, for
    storing a run's status in an array (a sweep's `status` output, a `.npz`).
    Under `jax.vmap` the item is batched and so is its code."""
    return jnp.asarray(result._value)


def status_name(code: int) -> str:
    """The name of the `RESULTS` item with integer code `code` (e.g.
    "successful", "event_occurred", "diverged", "max_steps_reached")."""
    for name in _NAMES:
        if int(getattr(RESULTS, name)._value) == int(code):
            return name
    raise ValueError(f"`code` {code!r} is not a flowgap.RESULTS code.")


# Equinox enumerations keep their items by name here (the only place that reads it).
_NAMES = tuple(RESULTS._name_to_item)
