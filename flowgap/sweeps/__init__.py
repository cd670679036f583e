"""Sweeps: one compiled program over a grid of runs (vmapped, or in sequential
vmapped groups), chunked, sharded over local devices, checkpointed and labelled."""

from ._batching import default_batch_size as default_batch_size
from ._result import SweepResult as SweepResult
from ._result import load_sweep as load_sweep
from ._sweep import SweepInterrupted as SweepInterrupted
from ._sweep import sweep as sweep
