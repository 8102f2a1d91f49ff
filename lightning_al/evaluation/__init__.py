"""Evaluation after every round: held-out loss and answers, BIG-Bench Hard chain of thought, multiple choice.

The answer extraction and exact-match functions are public: ``from lightning_al.evaluation import
extract_answer, exact_match``.
"""

from lightning_al.evaluation.answers import (
    ANSWER_MARKER,
    exact_match,
    extract_answer,
    normalize_answer,
    reference_answer,
    truncate_at_stop,
)
from lightning_al.evaluation.bbh import BigBenchHard
from lightning_al.evaluation.heldout import HeldOutAnswers, HeldOutLoss
from lightning_al.evaluation.multiple_choice import MultipleChoice
from lightning_al.evaluation.sets import Evaluation, EvaluationPass, GenerativeEvaluation

__all__ = [
    "ANSWER_MARKER",
    "BigBenchHard",
    "Evaluation",
    "EvaluationPass",
    "GenerativeEvaluation",
    "HeldOutAnswers",
    "HeldOutLoss",
    "MultipleChoice",
    "exact_match",
    "extract_answer",
    "normalize_answer",
    "reference_answer",
    "truncate_at_stop",
]
