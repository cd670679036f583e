"""What a failed flow reports: the `SolverError` message and its advice
(tolerances, step budget, stiff or non-smooth solvers)."""

import diffrax
import equinox as eqx
import jax.numpy as jnp

from .._checks import is_concrete
from ..models import non_smooth
from ._flow_options import NON_SMOOTH_ATOL, NON_SMOOTH_RTOL
from ._results import RESULTS, SolverError
from ._trajectory import Trajectory

# A share of rejected steps from which a failure's advice suspects kinks the model
# does not declare: the ReLU net of benchmarks/bench_relu.py at the smooth
# settings rejects 34% of its steps; the stiff plateau problem of
# benchmarks/bench_core.py 6% under the default PI controller, but 23% under
# plain I-control, hence the advice names stiffness too.
_KINK_REJECTED_SHARE = 0.15
_NON_SMOOTH_SETTINGS = "`solver=diffrax.Heun(), rtol={}, atol={}`".format(
    *(f"{tol:.0e}".replace("e-0", "e-") for tol in (NON_SMOOTH_RTOL, NON_SMOOTH_ATOL))
)


def _non_smooth_advice(
    model, steps: int, rejected: int, now: str, options: list[str]
) -> tuple[str, list[str]]:
    """(diagnosis, options) for `_failure_message`, given the usual `options`
    (raise max_steps, loosen the tolerances, a stiff solver) and the failed
    solve's final `model` and step counts: for a model with known kinks
    (`flowgap.models.non_smooth`), the non-smooth settings in place of a tighter
    or stiffer solve; when at least `_KINK_REJECTED_SHARE` of the steps were
    rejected, the suspicion and the settings first; else no diagnosis and
    `options` as they are."""
    share = f"{rejected / max(steps, 1):.0%} of {steps} steps rejected"
    kinks = non_smooth(model)
    if kinks:
        diagnosis = (
            f" The model is non-smooth ({', '.join(kinks)}): ∇L jumps wherever "
            "a unit's input crosses a kink, and the flow can slide along such a "
            "surface, where an adaptive solver shrinks its step to the tolerance "
            f"({share})."
        )
        return diagnosis, [
            f"a low-order solver at a loose tolerance, {_NON_SMOOTH_SETTINGS} "
            f"(gradient_flow's default for a non-smooth model; now {now})",
            options[0],
            'see the docs page "Non-smooth models"',
        ]
    if rejected < _KINK_REJECTED_SHARE * steps:
        return "", options
    diagnosis = (
        f" {share}: the mark of a non-smooth vector field (a kink such as relu, "
        "abs, max or hard_tanh in the model; declare it with a `non_smooth` "
        "method, see flowgap.models.PROTOCOL) or of stiffness."
    )
    return diagnosis, [f"if the model has kinks, {_NON_SMOOTH_SETTINGS}", *options]


def _failure_message(traj: Trajectory, t1, controller, max_steps, solver) -> str:
    solver_name = type(solver).__name__
    if isinstance(controller, diffrax.PIDController):
        tols = f"{float(controller.rtol):.3g}/{float(controller.atol):.3g}"
        now = f"{solver_name} at rtol/atol {tols}"
    else:
        tols = type(controller).__name__
        now = f"{solver_name} with {tols}"
    diagnosis, options = _non_smooth_advice(
        traj.final,
        int(traj.stats["num_steps"]),
        int(traj.stats["num_rejected_steps"]),
        now,
        [
            f"raise `max_steps` (now {max_steps})",
            f"loosen `rtol`/`atol` (now {tols})",
            f"a stiff solver such as `diffrax.Kvaerno5()` (now {solver_name})",
        ],
    )
    return (
        f"gradient flow stopped at t = {float(traj.stop_time):.6g} of t1 = "
        f"{float(t1):.6g}: {RESULTS[traj.result]}{diagnosis} Options: "
        f"{'; '.join(options)}. The partial trajectory is on `err.trajectory`."
    )


def throw_if_failed(traj, t1, controller, max_steps, solver):
    failed = ~traj.successful
    if is_concrete(traj.loss) and jnp.ndim(traj.stop_time) == 0:
        if bool(failed):
            raise SolverError(
                _failure_message(traj, t1, controller, max_steps, solver), traj
            )
        return traj
    checked = eqx.error_if(
        traj.loss,
        failed,
        "gradient flow failed; raise max_steps, loosen rtol/atol, or try a stiff "
        "solver such as diffrax.Kvaerno5()."
        # the model's kinks are structure, known under jit too
        + (
            f" The model is non-smooth: try {_NON_SMOOTH_SETTINGS}."
            if non_smooth(traj.final)
            else ""
        ),
    )
    return eqx.tree_at(lambda t: t.loss, traj, checked)
