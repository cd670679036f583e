"""Sweeps: one compiled, vmapped program over a grid of runs, chunked, sharded
over local devices, checkpointed and labelled."""

from ._result import SweepResult as SweepResult
from ._result import load_sweep as load_sweep
from ._sweep import SweepInterrupted as SweepInterrupted
from ._sweep import sweep as sweep
