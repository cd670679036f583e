r"""central-flow's measurements: gradient descent at one learning rate against
gradient flow, the order-1 modified flow and the central flow, from the
initialisation and re-anchored on GD's time average past the edge.

Time averages live on the half-step grid t = (j + ½)η, j = 0 … K − 1:

- θ̄_j = (θ_j + θ_{j+1})/2, the average of consecutive iterates, which cancels
  the period-two oscillation across the top eigenvectors;
- L̄_j, the mean of (L_i + L_{i+1})/2 over the `average` half steps around j;
- the oscillation energy e_j = ‖θ_{j+1} − θ_j‖²/4 (= ‖θ_j − θ̄_j‖², the squared
  distance of an iterate from its average), meaned the same way; the central
  flow predicts it as tr Σ.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import analysis, dynamics
from .._precision import attainable_tolerances, params_dtype

# solver tolerances: the flows are compared with GD at distances ≥ 1e-3, so
# 1e-7 relative error in θ is invisible; the central flow's Lanczos and QP are
# smooth in θ, so the same controller serves it


def _tolerances(dtype) -> dict:
    """rtol 1e-7 in float64; a coarser dtype's floor (100·ε) otherwise."""
    rtol, atol = attainable_tolerances(1e-7, 1e-9, dtype)
    return dict(rtol=rtol, atol=atol, max_steps=200_000)


def sliding_mean(values, width: int) -> np.ndarray:
    """The mean of `values[j − h … j + h]` along axis 0 (h = width // 2,
    truncated at both ends), for every j."""
    values = np.asarray(values, dtype=float)
    count = values.shape[0]
    total = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, 0)])
    index = np.arange(count)
    low = np.maximum(index - width // 2, 0)
    high = np.minimum(index + width // 2 + 1, count)
    shape = (count,) + (1,) * (values.ndim - 1)
    return (total[high] - total[low]) / (high - low).reshape(shape)


def flat_saves(models) -> np.ndarray:
    """The floating-point leaves of stacked `models`, flattened per save: (S, D)."""
    params, _ = eqx.partition(models, eqx.is_inexact_array)
    return np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(params))


def rebuild(model, theta):
    """`model` with its floating-point leaves replaced by the flat `theta`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    unravel = ravel_pytree(params)[1]
    return eqx.combine(unravel(jnp.asarray(theta)), static)


@eqx.filter_jit
def _sharpness_along(loss, model, thetas, iters):
    """λ_max(∇²L) at each row of `thetas`, Lanczos warm-started row to row."""

    def body(start, theta):
        values, vectors = analysis.sharpness(
            loss, rebuild(model, theta), iters=iters, init=start, return_vectors=True
        )
        return vectors[:, 0], values

    start = jnp.ones(thetas.shape[1], thetas.dtype)
    return jax.lax.scan(body, start, thetas)[1]


@eqx.filter_jit
def _losses(loss, model, thetas):
    """L at each row of `thetas`."""
    return jax.vmap(lambda theta: loss(rebuild(model, theta)))(thetas)


def _first_time(times, mask):
    mask = np.asarray(mask)
    return float(times[np.argmax(mask)]) if mask.any() else None


class _Flows:
    """Gradient flow, the order-1 modified flow and the central flow from one
    start, solved on `ts` and kept at saves `keep` (a slice): θ per save
    (`theta`), each flow's loss (`loss`) and the central flow's diagnostics
    (`aux`)."""

    NAMES = ("gf", "mf", "cf")

    def __init__(self, s, loss, start, lr, ts, keep):
        t1 = float(ts[-1])
        tolerances = _tolerances(params_dtype(start))
        modified = dynamics.ModifiedField(lr, order=1)
        # gradient flow as the order-1 modified field at η = 0, f − 0·f'f = f
        # exactly: both flows then share one compiled solve
        gradient = eqx.tree_at(lambda f: f.lr, modified, modified.lr * 0)
        flows = dict(
            gf=dynamics.gradient_flow(
                loss, start, field=gradient, t1=t1, ts=ts, **tolerances
            ),
            mf=dynamics.gradient_flow(
                loss, start, field=modified, t1=t1, ts=ts, **tolerances
            ),
            cf=dynamics.central_flow(
                loss,
                start,
                lr=lr,
                k=s["k"],
                lanczos_steps=s["lanczos_steps"],
                t1=t1,
                ts=ts,
                **tolerances,
            ),
        )
        self.theta = {n: flat_saves(f.models)[keep] for n, f in flows.items()}
        self.loss = {n: np.asarray(f.loss)[keep] for n, f in flows.items()}
        self.aux = {k: np.asarray(v)[keep] for k, v in flows["cf"].aux.items()}

    def distances(self, theta_bar):
        """‖θ̄ − θ_flow‖ per save, for each flow."""
        return {n: np.linalg.norm(theta_bar - t, axis=1) for n, t in self.theta.items()}


def _departure(t_bar, loss_at_average, gf_loss, threshold):
    """The first half step from which on, to the end, GD is apart from gradient
    flow: the loss at GD's average iterate, L(θ̄), differs from the flow's by
    more than `threshold`·L_GF. None if they are together at the end. (L(θ̄),
    not GD's averaged loss L̄, which exceeds it by the oscillation's ½⟨Σ, H⟩
    from the first step past the edge.)"""
    apart = np.abs(loss_at_average - gf_loss) > threshold * gf_loss
    if not apart[-1]:
        return None
    together = np.flatnonzero(~apart)
    return float(t_bar[together[-1] + 1 if together.size else 0])


def _window(s, lr, gd, after, flows):
    """The comparison on GD's half steps `after` (a slice), from GD's departure
    from `flows`' gradient flow (`_departure`) to the end. **Returns:** the
    departure time, the distances, and over the window the smallest ratios
    ‖θ̄ − θ_GF‖/‖θ̄ − θ_CF‖ and ‖θ̄ − θ_MF‖/‖θ̄ − θ_CF‖, the largest relative error
    of the predicted loss against L̄, and that of the central flow's sharpness
    against 2/η."""
    t_bar, loss_bar = gd["t_bar"][after], gd["loss_bar"][after]
    theta_bar = gd["theta_bar"][after]
    dist = flows.distances(theta_bar)
    depart = _departure(
        t_bar, gd["loss_at_average"][after], flows.loss["gf"], s["threshold"]
    )
    predicted_error = flows.aux["predicted_loss"] / loss_bar - 1
    out = dict(depart=depart, distances=dist, predicted_error=predicted_error)
    if depart is None:
        return out
    inside = t_bar >= depart
    out.update(
        gf_ratio=float(np.min(dist["gf"][inside] / dist["cf"][inside])),
        mf_ratio=float(np.min(dist["mf"][inside] / dist["cf"][inside])),
        loss_error=float(np.max(np.abs(predicted_error[inside]))),
        edge_error=float(np.max(np.abs(flows.aux["sharpness"][inside] * lr / 2 - 1))),
        window=float(t_bar[-1] - depart),
    )
    return out


def _descent(s, problem, model, lr):
    """GD for t1/lr steps and its time averages on the half-step grid."""
    steps = int(round(s["t1"] / lr))
    gd = dynamics.gradient_descent(problem.loss, model, lr=lr, steps=steps)
    theta = flat_saves(gd.models)
    theta_bar = 0.5 * (theta[:-1] + theta[1:])
    raw = np.asarray(gd.loss)
    return dict(
        steps=steps,
        t_steps=np.asarray(gd.ts),
        loss=raw,
        theta_bar=theta_bar,
        loss_at_average=np.asarray(_losses(problem.loss, model, theta_bar)),
        t_bar=(np.arange(steps) + 0.5) * lr,
        loss_bar=sliding_mean(0.5 * (raw[:-1] + raw[1:]), s["average"]),
        energy=sliding_mean(np.sum((theta[1:] - theta[:-1]) ** 2, 1) / 4, s["average"]),
    )


def _settled_at(s, lr, t_sharpness, sharp):
    """The anchor time: `anchor` if set, else the first time from which on GD's
    sharpness at θ̄ stays within `settled` of 2/η (None if it never does)."""
    if s["anchor"]:
        return s["anchor"]
    near = np.abs(sharp * lr / 2 - 1) < s["settled"]
    if not near[-1]:
        return None
    apart = np.flatnonzero(~near)
    return float(t_sharpness[apart[-1] + 1 if apart.size else 0])


def _anchored(s, problem, model, lr, gd, anchor_time):
    """The flows restarted from GD's θ̄ at `anchor_time` and their window; saved
    on as many times as the first solves (the last repeated), so they reuse
    those compiled programs."""
    t_bar = gd["t_bar"]
    anchor = min(int(round(anchor_time / lr - 0.5)), t_bar.shape[0] - 2)
    after = slice(anchor, None)
    count = t_bar.shape[0] - anchor
    ts = np.full(t_bar.shape[0] + 1, t_bar[-1] - t_bar[anchor])
    ts[:count] = t_bar[after] - t_bar[anchor]
    start = rebuild(model, gd["theta_bar"][anchor])
    flows = _Flows(s, problem.loss, start, lr, jnp.asarray(ts), slice(0, count))
    window = _window(s, lr, gd, after, flows)
    window["anchor"] = float(t_bar[anchor])
    return after, window


def measure_rate(s, problem, model, lr):
    """Everything central-flow reports for one learning rate: its table row and
    its curves (keys `LR/...`)."""
    gd = _descent(s, problem, model, lr)
    t_bar = gd["t_bar"]
    ts = jnp.concatenate([jnp.zeros(1), jnp.asarray(t_bar)])
    init = _Flows(s, problem.loss, model, lr, ts, keep=slice(1, None))
    init_window = _window(s, lr, gd, slice(None), init)

    stride = max(1, t_bar.shape[0] // s["sharpness_points"])
    thetas = jnp.asarray(gd["theta_bar"][::stride])
    sharp = np.asarray(
        _sharpness_along(problem.loss, model, thetas, s["lanczos_steps"])
    )
    anchor_time = _settled_at(s, lr, t_bar[::stride], sharp)
    if anchor_time is None:  # GD never settles at the edge: nothing to re-anchor on
        after, anchored = slice(0, 0), dict(depart=None, anchor=None, distances={})
    else:
        after, anchored = _anchored(s, problem, model, lr, gd, anchor_time)
    # eigenvalues the central flow holds at the edge (within 0.1%), at most;
    # reaching k means that k may be too small to model GD
    at_edge = init.aux["eigs"] * lr / 2 > 1 - 1e-3
    row = dict(
        lr=lr,
        held=int(np.max(np.sum(at_edge, axis=1))),
        cross_time=_first_time(t_bar[::stride], sharp > 2 / lr),
        depart_time=init_window["depart"],
        end_gf_ratio=float(
            init_window["distances"]["gf"][-1] / init_window["distances"]["cf"][-1]
        ),
        anchor_time=anchored["anchor"],
        anchored_depart=anchored["depart"],
        anchored_window=anchored.get("window"),
    )
    for prefix, window in (("init", init_window), ("anchored", anchored)):
        for name in ("gf_ratio", "mf_ratio", "loss_error", "edge_error"):
            row[f"{prefix}_{name}"] = window.get(name)
    return row, _curves(
        f"{lr:g}", gd, init, init_window, anchored, stride, sharp, after
    )


def _curves(key, gd, init, init_window, anchored_window, stride, sharp, after):
    curves = {
        "t_steps": gd["t_steps"],
        "gd_loss": gd["loss"],
        "t": gd["t_bar"],
        "gd_average": gd["loss_bar"],
        "gf_loss": init.loss["gf"],
        "cf_predicted": init.aux["predicted_loss"],
        "t_sharpness": gd["t_bar"][::stride],
        "gd_sharpness": sharp,
        "cf_sharpness": init.aux["sharpness"],
        "sigma_trace": init.aux["sigma_trace"],
        "energy": gd["energy"],
        "t_anchored": gd["t_bar"][after],
    }
    for name, dist in init_window["distances"].items():
        curves[f"distance_{name}"] = dist
    for name in ("gf", "cf"):
        curves[f"anchored_distance_{name}"] = anchored_window["distances"].get(
            name, np.zeros(0)
        )
    return {f"{key}/{name}": value for name, value in curves.items()}
