"""Random sampling: the baseline every other strategy is compared with."""

from __future__ import annotations

import numpy as np

from lightning_al.strategies.base import AcquisitionStrategy, check_k


class RandomSampling(AcquisitionStrategy):
    """Uniform sample without replacement, from the run's seed."""

    def select(self, candidates, scores, k, rng, **inputs):
        check_k(candidates, k)
        return np.sort(candidates[rng.choice(len(candidates), size=k, replace=False)])
