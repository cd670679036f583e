"""Problems: data, ground truth and a half-MSE loss (science.md §2)."""

from ._generators import (
    low_rank as low_rank,
    sparse_recovery as sparse_recovery,
    teacher_student as teacher_student,
    whitened as whitened,
)
from ._regression import RegressionProblem as RegressionProblem
