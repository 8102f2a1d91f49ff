"""The strategy interface and the helpers every strategy shares.

Scoring is the model's job (``LoRALanguageModel.predict_step``); a strategy only chooses. Every
selection is a pure function of its inputs and the round's ``rng``, so it is reproducible bit for bit;
ties go to the earlier candidate (pool order).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

#: How each ``predict_step`` score turns into the uncertainty u of BRIEF §2 (u >= 0, higher = more
#: uncertain): True = as is, False = the score is a "certainty" (low = uncertain).
HIGHER_IS_UNCERTAIN: dict[str, bool] = {
    "entropy": True, "max_entropy": True, "confidence": False, "margin": False, "min_margin": False,
}


def uncertainty(score_name: str, values: np.ndarray) -> np.ndarray:
    """u of a score, in float64: entropy and max_entropy as is, -confidence, 1 - margin, 1 - min_margin."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"{score_name} scores contain NaN")
    if score_name in ("entropy", "max_entropy"):
        return values
    if score_name == "confidence":
        return -values
    if score_name in ("margin", "min_margin"):
        return 1.0 - values
    raise ValueError(f"no uncertainty is defined for score {score_name!r}; one of {sorted(HIGHER_IS_UNCERTAIN)}")


def top_k(scores: np.ndarray, k: int, highest: bool) -> np.ndarray:
    """Positions of the k highest (or lowest) scores; ties go to the earlier position (pool order)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-scores if highest else scores, kind="stable")
    return order[:k]


def round_sizes(budget: int, rounds: int) -> list[int]:
    """Acquisitions per round: floor(B/m), one more for the first B mod m rounds; sums to B."""
    if rounds < 1:
        raise ValueError(f"loop.rounds must be >= 1, got {rounds}")
    if budget < rounds:
        raise ValueError(f"loop.budget ({budget}) must be >= loop.rounds ({rounds}): every round acquires")
    base, extra = divmod(budget, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


class AcquisitionStrategy:
    """Base class of the acquisition strategies.

    Class attributes say what the loop must compute before ``select``: ``score`` names the
    ``predict_step`` output the strategy ranks by (None: no scoring pass), ``needs_embeddings`` asks for
    the candidates' (and the labeled set's) prompt embeddings, ``needs_tasks`` for the candidates' tasks.
    """

    score: str | None = None
    needs_embeddings: bool = False
    needs_tasks: bool = False

    def select(
        self,
        candidates: np.ndarray,
        scores: np.ndarray | None,
        k: int,
        rng: np.random.Generator,
        *,
        embeddings: Any = None,
        labeled_embeddings: Any = None,
        tasks: np.ndarray | None = None,
    ) -> np.ndarray:
        """Return ``k`` of ``candidates`` (pool indices, sorted).

        Args:
            candidates: Pool indices of the unlabeled examples, in pool order.
            scores: The ``score`` of each candidate (aligned with ``candidates``), or None.
            k: How many to acquire.
            rng: The round's generator (``np.random.default_rng([seed, round])``).
            embeddings: [len(candidates), d] L2-normalised prompt embeddings (numpy or torch, any float dtype).
            labeled_embeddings: [n_labeled, d] embeddings of the labeled set (may have 0 rows).
            tasks: Task name of each candidate.
        """
        raise NotImplementedError

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this strategy (read back from same-named attributes)."""
        params = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in params if name != "self" and hasattr(self, name)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())
        return f"{type(self).__name__}({args})" if args else type(self).__name__


def check_k(candidates: np.ndarray, k: int) -> None:
    """Refuse a k the candidates cannot fill (the loop checks the budget; this guards direct calls)."""
    if not 0 <= k <= len(candidates):
        raise ValueError(f"cannot acquire {k} of {len(candidates)} candidates")


def check_aligned(name: str, values: Any, candidates: np.ndarray) -> None:
    """Fail naming the input when it is missing or not one row per candidate."""
    if values is None:
        raise ValueError(f"this strategy needs {name}, got None")
    if len(values) != len(candidates):
        raise ValueError(f"{name} has {len(values)} rows for {len(candidates)} candidates")
