"""Uncertainty sampling: the k candidates with the highest (or lowest) value of one score."""

from __future__ import annotations

import numpy as np

from lightning_al.strategies.base import AcquisitionStrategy, check_aligned, check_k, top_k


class UncertaintySampling(AcquisitionStrategy):
    """Acquire the examples with the highest (or lowest) value of a score.

    Args:
        score: A score returned by the model's predict_step: entropy, confidence, margin, min_margin, max_entropy.
        highest: Acquire the highest values (True) or the lowest (False).
    """

    def __init__(self, score: str = "entropy", highest: bool = True) -> None:
        self.score = score
        self.highest = highest

    def select(self, candidates, scores, k, rng, **inputs):
        check_k(candidates, k)
        check_aligned(f"{self.score} scores", scores, candidates)
        return np.sort(candidates[top_k(scores, k, self.highest)])


class EntropySampling(UncertaintySampling):
    """Highest mean token entropy (nats)."""

    def __init__(self) -> None:
        super().__init__("entropy", highest=True)


class ConfidenceSampling(UncertaintySampling):
    """Lowest mean token log-probability (least confident)."""

    def __init__(self) -> None:
        super().__init__("confidence", highest=False)


class MarginSampling(UncertaintySampling):
    """Lowest mean margin between the two most probable tokens."""

    def __init__(self) -> None:
        super().__init__("margin", highest=False)


class MinMarginSampling(UncertaintySampling):
    """Lowest minimum margin over the scored tokens."""

    def __init__(self) -> None:
        super().__init__("min_margin", highest=False)


class MaxTokenUncertainty(UncertaintySampling):
    """Highest entropy of the single most uncertain scored token (``max_entropy``): one hard step
    is enough, where the mean entropy dilutes it over a long answer."""

    def __init__(self) -> None:
        super().__init__("max_entropy", highest=True)
