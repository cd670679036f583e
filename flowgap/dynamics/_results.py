import diffrax


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
