"""The stitching penalty (paper eq. 4.3) and its confidence intervals over pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def stitching_penalty(accuracy_a: float, accuracy_b: float, accuracy_s: float):
    """The stitching penalty of eq. 4.3.

    .. math:: \\mathrm{pen}(S) = \\tfrac12 (\\mathrm{Acc}\\, f
        + \\mathrm{Acc}\\, \\tilde f) - \\mathrm{Acc}\\, S(f, \\tilde f, l, \\phi)

    Args:
      accuracy_a: test accuracy of ``f`` (the front model), a fraction.
      accuracy_b: test accuracy of ``f~`` (the back model).
      accuracy_s: test accuracy of the stitched network.

    Returns:
      The penalty, a fraction (multiply by 100 for percentage points); works on
      floats and on numpy arrays alike.
    """
    return 0.5 * (accuracy_a + accuracy_b) - accuracy_s


def confidence_interval(
    values: Sequence[float], level: float = 0.95
) -> tuple[float, float]:
    """Mean and Student-t half-width of a confidence interval.

    Args:
      values: one penalty per model pair.
      level: coverage of the interval.

    Returns:
      ``(mean, half_width)``; the half-width is NaN for fewer than two values.

    Note:
      Pairs drawn from one zoo share models, so their penalties are not
      independent and the interval is somewhat optimistic, as in the paper.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got {x.shape}.")
    if x.size < 2:
        return float(x.mean()), math.nan
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(stats.t.ppf(0.5 + level / 2, x.size - 1) * sem)
