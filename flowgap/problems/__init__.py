"""Problems: data, ground truth and a half-MSE loss (docs: theory/one-clock)."""

from ._datasets import digits as digits
from ._generators import (
    low_rank as low_rank,
)
from ._generators import (
    random_labels as random_labels,
)
from ._generators import (
    sparse_recovery as sparse_recovery,
)
from ._generators import (
    teacher_student as teacher_student,
)
from ._generators import (
    whitened as whitened,
)
from ._regression import RegressionProblem as RegressionProblem
