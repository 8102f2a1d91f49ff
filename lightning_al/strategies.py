"""Acquisition strategies: given the unlabeled candidates (and their scores), pick the ones to label.

Scoring is the model's job (``LoRALanguageModel.predict_step``); a strategy only ranks. Every
selection is a pure function of (candidates, scores, k, rng), so it is reproducible bit for bit.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, highest: bool) -> np.ndarray:
    """Positions of the k highest (or lowest) scores; ties go to the earlier position (pool order)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-scores if highest else scores, kind="stable")
    return order[:k]


class AcquisitionStrategy:
    """Base class. ``score`` names the ``predict_step`` output the strategy ranks by (None: no scoring pass)."""

    score: str | None = None

    def select(self, candidates: np.ndarray, scores: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``k`` of ``candidates`` (pool indices in pool order); ``scores`` is aligned with them."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class RandomSampling(AcquisitionStrategy):
    """Uniform sample without replacement, from the run's seed."""

    def select(self, candidates, scores, k, rng):
        return np.sort(candidates[rng.choice(len(candidates), size=k, replace=False)])


class UncertaintySampling(AcquisitionStrategy):
    """Acquire the examples with the highest (or lowest) value of a score.

    Args:
        score: A score returned by the model's predict_step: entropy, confidence, margin, min_margin, max_entropy.
        highest: Acquire the highest values (True) or the lowest (False).
    """

    def __init__(self, score: str = "entropy", highest: bool = True) -> None:
        self.score = score
        self.highest = highest

    def select(self, candidates, scores, k, rng):
        return np.sort(candidates[top_k(scores, k, self.highest)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.score}, {'highest' if self.highest else 'lowest'})"


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


def round_sizes(budget: int, rounds: int) -> list[int]:
    """Acquisitions per round: floor(B/m), one more for the first B mod m rounds; sums to B."""
    if rounds < 1:
        raise ValueError(f"loop.rounds must be >= 1, got {rounds}")
    if budget < rounds:
        raise ValueError(f"loop.budget ({budget}) must be >= loop.rounds ({rounds}): every round acquires")
    base, extra = divmod(budget, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]
