import dataclasses
import pathlib

import jax
import numpy as np

from ._io import write_npz


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Labelled sweep results.

    - `axes`: {name: values} in grid order.
    - `values`: the pytree `fn` returned, each leaf with leading axes of the grid's
      shape (one per axis, in order).

    `to_xarray()` gives an `xarray.Dataset`;
    `save(path)` writes an npz file, loadable with `load_sweep` (no pickle).
    """

    axes: dict
    values: object

    @property
    def shape(self) -> tuple:
        return tuple(len(v) for v in self.axes.values())

    def named_leaves(self) -> dict:
        flat = jax.tree_util.tree_flatten_with_path(self.values)[0]
        return {
            (jax.tree_util.keystr(path).strip("[]'.") or "value"): np.asarray(leaf)
            for path, leaf in flat
        }

    def to_xarray(self):
        import xarray as xr

        dims = list(self.axes)
        data = {}
        for name, leaf in self.named_leaves().items():
            extra = [f"{name}_dim{i}" for i in range(leaf.ndim - len(dims))]
            data[name] = (dims + extra, leaf)
        return xr.Dataset(data, coords=dict(self.axes))

    def save(self, path) -> pathlib.Path:
        path = pathlib.Path(path)
        arrays = {f"axis/{k}": v for k, v in self.axes.items()}
        arrays.update({f"value/{k}": v for k, v in self.named_leaves().items()})
        write_npz(path, arrays)
        return path


def load_sweep(path) -> SweepResult:
    """Load a saved sweep: axes, and values as a flat {name: array} dict."""
    with np.load(path, allow_pickle=False) as data:
        axes = {k[5:]: data[k] for k in data.files if k.startswith("axis/")}
        values = {k[6:]: data[k] for k in data.files if k.startswith("value/")}
    return SweepResult(axes=axes, values=values)
