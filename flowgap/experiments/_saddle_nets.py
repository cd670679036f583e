r"""The two-layer nets of saddle-to-saddle and their runs on both clocks. The
activation is data, so the linear and the tanh net share one compiled GD program
and one compiled flow."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float
from tqdm.auto import tqdm

from .. import dynamics, models
from .._precision import attainable, params_dtype


class StagedTwoLayer(eqx.Module):
    r"""f(x) = W₂σ(W₁x) with σ(z) = tanh z where `tanh` is set and σ(z) = z
    where it is not, chosen elementwise by `jnp.where`: each branch is exactly
    that net's value and gradient (the other branch's cotangent is an exact 0).

    `tanh` is a boolean array leaf, so it is traced (a new value never
    recompiles) and never trained (the trainers move floating-point leaves only).
    `models.TwoLayer` holds its activation as a static name, which compiles one
    program per activation; the flow's diffrax program takes seconds to compile,
    and JAX's persistent cache does not keep it, so every run pays for each one.

    **Fields:** `w1` (m, d), `w2` (k, m), `tanh` (a scalar bool).
    """

    w1: Float[Array, "width in_dim"]
    w2: Float[Array, "out_dim width"]
    tanh: Bool[Array, ""]

    @staticmethod
    def of(net: models.TwoLayer) -> "StagedTwoLayer":
        """The same weights as `net` (linear or tanh), with its activation as data."""
        if net.activation not in ("linear", "tanh"):
            raise ValueError(
                f"`net.activation` must be 'linear' or 'tanh', got {net.activation!r}."
            )
        return StagedTwoLayer(net.w1, net.w2, jnp.asarray(net.activation == "tanh"))

    def __call__(self, x: Float[Array, " in_dim"]) -> Float[Array, " out_dim"]:
        z = self.w1 @ x
        return self.w2 @ jnp.where(self.tanh, jnp.tanh(z), z)

    def non_smooth(self) -> tuple[str, ...]:
        """() : both activations are smooth (the model protocol)."""
        return ()


def staircase_runs(problem, s, steps: int, activations, progress: bool) -> dict:
    """GD (every step saved) and GF (`flow_saves_per_step` saves per GD step) per
    activation of `activations` and init scale of `scales`, from the same
    weights for every activation (key 1): one compiled program per clock, as the
    activation is data (`StagedTwoLayer`). Keyed by (activation, scale)."""
    out = {}
    jobs = [(a, scale) for a in activations for scale in s["scales"]]
    for activation, scale in tqdm(jobs, desc="saddle-to-saddle", disable=not progress):
        net = StagedTwoLayer.of(
            models.TwoLayer(
                s["d"],
                s["width"],
                s["out_dim"],
                activation=activation,
                scale=scale,
                key=jax.random.key(1),
            )
        )
        gd = dynamics.gradient_descent(problem.loss, net, lr=s["lr"], steps=steps)
        gf = dynamics.gradient_flow(
            problem.loss,
            net,
            t1=s["t1"],
            ts=jnp.linspace(0.0, s["t1"], steps * s["flow_saves_per_step"] + 1),
            # 1e-10 in float64; a coarser dtype's floor (100·ε) otherwise
            rtol=attainable(1e-10, params_dtype(net)),
            # weights start at α: an absolute tolerance above α would switch off
            # error control on the plateau and misplace the escape
            atol=1e-4 * scale,
            max_steps=1_000_000,
        )
        out[activation, scale] = {"gd": gd, "gf": gf}
    return out
