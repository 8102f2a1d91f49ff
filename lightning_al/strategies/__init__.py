"""Acquisition strategies: given the unlabeled candidates (and their scores, embeddings or tasks), pick
the ones to label. Short names (``entropy``, ``kcenter``, ``power-entropy``, ...) are in ``registry``."""

from lightning_al.strategies.balanced import TaskBalancedSampling
from lightning_al.strategies.base import AcquisitionStrategy, round_sizes, top_k, uncertainty
from lightning_al.strategies.facility import FacilityLocation
from lightning_al.strategies.kcenter import KCenterGreedy
from lightning_al.strategies.random_sampling import RandomSampling
from lightning_al.strategies.registry import REGISTRY, name_of, strategy_from_name, strategy_from_spec
from lightning_al.strategies.stochastic import StochasticSampling
from lightning_al.strategies.uncertainty_sampling import (
    ConfidenceSampling,
    EntropySampling,
    MarginSampling,
    MaxTokenUncertainty,
    MinMarginSampling,
    UncertaintySampling,
)

__all__ = [
    "REGISTRY",
    "AcquisitionStrategy",
    "ConfidenceSampling",
    "EntropySampling",
    "FacilityLocation",
    "KCenterGreedy",
    "MarginSampling",
    "MaxTokenUncertainty",
    "MinMarginSampling",
    "RandomSampling",
    "StochasticSampling",
    "TaskBalancedSampling",
    "UncertaintySampling",
    "name_of",
    "round_sizes",
    "strategy_from_name",
    "strategy_from_spec",
    "top_k",
    "uncertainty",
]
