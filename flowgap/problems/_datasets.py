"""Real data sets, bundled offline by their packages (no download)."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._checks import positive_int
from ._regression import RegressionProblem

_DIGITS_SIZE = 1797  # images in scikit-learn's copy of the UCI digits


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # a core dependency; only a broken install lands here
        raise ImportError(
            "`digits` needs scikit-learn (`pip install scikit-learn`), which ships "
            "the data set offline."
        ) from err
    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target)


def digits(
    n: int | None = None,
    *,
    key: PRNGKeyArray | None = None,
    classes: int = 10,
    center: bool = True,
    dtype=None,
) -> RegressionProblem:
    r"""The UCI handwritten digits (8×8 grey images, 1,797 of them, as bundled by
    scikit-learn), as a regression on one-hot targets under the half-MSE loss.

    Inputs are the 64 pixels scaled to [0, 1] (divided by 16); targets are the
    one-hot class vectors e_c ∈ ℝ^classes. With `center` (default), both are
    centred by their means over the chosen examples, so a network with zero
    output already predicts the class frequencies and the loss starts at the
    targets' variance, (1 − Σ_c p_c²)/2 for class frequencies p_c.

    **Arguments:**

    - `n`: how many examples (default all of those in the chosen classes).
    - `key`: None takes the first `n` in the file's order; a key draws `n`
      uniformly without replacement (same key, same examples).
    - `classes`: keep the digits 0 … classes − 1 (2 to 10).
    - `center`: centre inputs and targets (see above).
    - `dtype`: float dtype (default: JAX's default float).

    **Returns:** a `RegressionProblem` with inputs (n, 64), targets (n, classes)
    and `truth` the integer labels (n,).
    """
    classes = positive_int("classes", classes)
    if not 2 <= classes <= 10:
        raise ValueError(f"`classes` must be from 2 to 10, got {classes}.")
    pixels, labels = _load_digits()
    keep = labels < classes
    pixels, labels = pixels[keep], labels[keep]
    available = labels.shape[0]
    n = available if n is None else positive_int("n", n)
    if n > available:
        raise ValueError(
            f"`n` must be at most {available} (the digits 0–{classes - 1}), got {n}."
        )
    if key is None:
        chosen = np.arange(n)
    else:
        chosen = np.asarray(jax.random.choice(key, available, (n,), replace=False))
    dtype = jnp.result_type(float) if dtype is None else dtype
    inputs = pixels[chosen] / 16.0
    targets = np.eye(classes)[labels[chosen]]
    if center:
        inputs = inputs - inputs.mean(axis=0)
        targets = targets - targets.mean(axis=0)
    return RegressionProblem(
        jnp.asarray(inputs, dtype),
        jnp.asarray(targets, dtype),
        jnp.asarray(labels[chosen]),
    )
