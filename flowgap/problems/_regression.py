import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class RegressionProblem(eqx.Module):
    r"""A data set with its ground truth and the half-mean-squared-error loss.

    $$L(\text{model}) = \frac{1}{2n}\sum_{i=1}^n \lVert f(x_i) - y_i\rVert^2$$

    (docs: theory/one-clock: "half MSE"; any other convention only rescales time).

    The data are array fields of an Equinox module, so `problem.loss` (a bound
    method, itself a pytree) carries them as traced inputs: a new data set of the
    same shape never recompiles a trainer.

    **Fields:**

    - `inputs`: x, shape (n, …).
    - `targets`: y, shape (n,) for scalar-output models or (n, k).
    - `truth`: the ground truth that generated the targets (β*, W*, or a teacher
      model), or None.
    """

    inputs: Float[Array, "n ..."]
    targets: Float[Array, "n ..."]
    truth: PyTree = None

    def __init__(self, inputs, targets, truth=None):
        inputs = jnp.asarray(inputs)
        targets = jnp.asarray(targets)
        if inputs.ndim < 1 or targets.ndim < 1:
            raise ValueError("`inputs` and `targets` must have a leading sample axis.")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                "`inputs` and `targets` must have the same number of samples, got "
                f"{inputs.shape[0]} and {targets.shape[0]}."
            )
        if not jnp.issubdtype(inputs.dtype, jnp.floating):
            raise TypeError(f"`inputs` must be floating point, got {inputs.dtype}.")
        self.inputs = inputs
        self.targets = targets.astype(inputs.dtype)
        self.truth = truth

    @property
    def n(self) -> int:
        return self.inputs.shape[0]

    def predict(self, model) -> Float[Array, "n ..."]:
        """f(xᵢ) for every sample, shape (n, …)."""
        try:
            return jax.vmap(model)(self.inputs)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"the model cannot be applied to `inputs` of shape {self.inputs.shape} "
                f"(one sample: {self.inputs.shape[1:]}): {err}"
            ) from err

    def loss(self, model) -> Float[Array, ""]:
        """(1/2n) Σᵢ ‖f(xᵢ) − yᵢ‖²."""
        predictions = self.predict(model)
        if predictions.shape != self.targets.shape:
            raise ValueError(
                f"The model's outputs on `inputs` have shape {predictions.shape} but "
                f"`targets` has shape {self.targets.shape}."
            )
        return 0.5 * jnp.sum((predictions - self.targets) ** 2) / self.n
