"""step-vs-flow's science, shared by `flowgap run` and `flowgap sweep`: the
problem, the flow solver and the measurements, and the sweep's point (one GD run
and its flow to the horizon T = t1) with the grid's preparation."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import dynamics, models, problems
from .._precision import attainable_tolerances, params_dtype
from ._ladder import ladder_steps
from ._settings import SettingError
from ._sweepable import Sweepable

# The science `flowgap run` (a ladder of rates to one horizon t1, both nets, one
# flow per net) and `flowgap sweep` (`point`: the plain net, one flow per point, to
# the same horizon t1) share: the problem, the flow solver and the measurements.
# Where the sweep's longest run is t1/lr steps, `point` gives the run's plain-net
# numbers bit for bit.

#: a run "left the flow" when ‖θ_GD(T) − θ_GF(T)‖ > LEFT_FLOW · ‖θ_GF(T)‖
LEFT_FLOW = 0.1


def draw_problem(settings, key):
    """The sparse-recovery problem drawn by `key`."""
    s = settings
    return problems.sparse_recovery(key, n=s["n"], d=s["d"], sparsity=s["sparsity"])


def exact_flow(loss, model, settings, *, t1, **options):
    """The exact gradient flow to `t1`: Dopri8 at the job's `rtol` and `atol`,
    raised together to what the model's dtype can reach (unchanged in float64);
    `options` (`ts`, `rates`, `max_steps`) go to `dynamics.gradient_flow`."""
    rtol, atol = attainable_tolerances(
        settings["rtol"], settings["atol"], params_dtype(model)
    )
    return dynamics.gradient_flow(
        loss, model, t1=t1, solver=diffrax.Dopri8(), rtol=rtol, atol=atol, **options
    )


def recovery_error_of(trajectory, truth):
    """‖β − β*‖ at the end of `trajectory`."""
    return jnp.linalg.norm(trajectory.final.end_to_end() - truth)


@eqx.filter_jit
def distance(a, b, *, batch_dims: int = 0):
    """‖a − b‖₂ over the trainable leaves, per index of the leading `batch_dims`
    axes (1 for two trajectories' `models`: one value per save). One program per
    shape of the pair (op by op, each leaf's ops would compile their own)."""
    la = jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))
    squares = sum(
        jnp.sum((x - y) ** 2, axis=tuple(range(batch_dims, x.ndim)))
        for x, y in zip(la, lb)
    )
    return jnp.sqrt(squares)


def point(settings, *, key, lr, scale=None):
    r"""One sweep point: the plain diagonal net on the problem drawn by `key`, by
    GD at `lr` for K = t1/lr steps and by the exact flow, compared at the one time
    T = Kη on the clock t = kη: every lr of a sweep is compared at the horizon
    T = `t1`. `scale` defaults to the setting.

    The program runs `settings["max_steps"]` steps (from `SWEEP.settings_for`: the
    largest K of the grid), GD moving for the first K only (`dynamics.MovesFor`), so the
    grid compiles once while each run stops at its own K.

    **Returns:** `recovery_error` ‖β_GD − β*‖, `flow_recovery_error` ‖β_GF − β*‖,
    `gap` ‖θ_GD(T) − θ_GF(T)‖, `relative_gap` gap/‖θ_GF(T)‖, `left_flow` (1 when
    the relative gap exceeds `LEFT_FLOW`: GD is O(1) away from the flow, not O(η)),
    `time` T = Kη, `final_loss` (GD) and `status` (GD's, else GF's).
    """
    s = settings
    scale = s["scale"] if scale is None else scale
    problem = draw_problem(s, key)
    model = models.DiagonalNet(s["d"], depth=s["depth"], scale=scale)
    steps = jnp.round(s["t1"] / lr)
    gd = dynamics.gradient_descent(
        problem.loss,
        model,
        lr=lr,
        steps=s["max_steps"],
        save_every=s["max_steps"],
        optimizer=dynamics.MovesFor(steps),
    )
    time = steps * lr
    gf = exact_flow(problem.loss, model, s, t1=time)
    gap = distance(gd.final, gf.final)
    relative_gap = gap / optax.tree.norm(eqx.filter(gf.final, eqx.is_inexact_array))
    gd_status = dynamics.status_code(gd.result)
    gf_status = dynamics.status_code(gf.result)
    return dict(
        recovery_error=recovery_error_of(gd, problem.truth),
        flow_recovery_error=recovery_error_of(gf, problem.truth),
        gap=gap,
        relative_gap=relative_gap,
        left_flow=(relative_gap > LEFT_FLOW).astype(jnp.int32),
        time=time,
        final_loss=gd.final_loss,
        status=jnp.where(gd_status != 0, gd_status, gf_status),
    )


def prepare_sweep(settings, grid):
    """The settings of a sweep over `grid`: `max_steps`, the largest t1/lr over
    the `lr` axis. Raises `SettingError` without an `lr` axis, or when t1 is not a
    whole number of steps of some lr (so every run ends exactly at T = t1)."""
    if "lr" not in grid:
        raise SettingError(
            "sweeping step-vs-flow needs a `--grid lr=...` axis (each lr runs "
            "t1/lr steps to the horizon t1)"
        )
    try:
        steps = ladder_steps(settings["t1"], [float(lr) for lr in grid["lr"]])
    except SettingError as error:
        raise SettingError(
            f"`--grid` axis `lr`: {str(error).removeprefix('setting `lrs`: ')} "
            "(every lr runs t1/lr steps; choose lrs dividing t1, or --set t1=...)"
        ) from None
    return {**settings, "max_steps": max(steps.values())}


def _context(settings):
    return f"horizon T = {settings['t1']:g} for every lr (K = T/lr GD steps)"


SWEEP = Sweepable(
    axes=("scale", "lr"),
    point=point,
    metric="gap",
    prepare=prepare_sweep,
    context=_context,
    flag="left_flow",
    flag_meaning=(
        f"GD left the flow, ‖θ_GD(T) − θ_GF(T)‖ > {LEFT_FLOW:g}·‖θ_GF(T)‖ (an O(1) "
        "gap, not the O(η) error of the flow's Euler method)"
    ),
)
