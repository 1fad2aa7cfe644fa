"""Corrections for multiple testing, shared by the rating tests and the memorization verdict.

One audit or study runs many tests at once (class x generator cells); read one by one at
alpha, some cell of a null study crosses alpha by chance. Both families adjust their p-values
here, by Holm's step-down method by default or by any method of statsmodels' `multipletests`.
"""

from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests

# The methods of statsmodels' multipletests that control the family-wise error or the FDR.
CORRECTIONS = ("holm", "bonferroni", "sidak", "holm-sidak", "simes-hochberg", "hommel", "fdr_bh", "fdr_by")


def adjusted_p(p: np.ndarray, correction: str, alpha: float = 0.05) -> np.ndarray:
    """p-values adjusted for multiple testing by the named method.

    Holm's step-down adjustment, the default, is computed here: statsmodels' `multipletests`
    runs a full garbage collection for it, which costs more than all rating statistics
    together. Every other method is statsmodels'.
    """
    if correction != "holm":
        return multipletests(p, alpha=alpha, method=correction)[1]
    order = np.argsort(p, kind="stable")
    steps = p[order] * np.arange(p.size, 0, -1)
    adjusted = np.empty_like(steps)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adjusted
