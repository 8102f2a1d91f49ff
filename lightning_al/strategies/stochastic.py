"""Stochastic acquisition (Kirsch et al., TMLR 2023): sample instead of taking the top k.

Taking the k most uncertain of a large pool picks near-duplicates of one hard region; sampling
k without replacement with weights that grow with the uncertainty keeps the preference for uncertain
examples and spreads the batch. The sample is the top k of ``log w_i + Gumbel_i`` (the Gumbel-top-k
trick), which is exactly successive sampling without replacement with probabilities ∝ w.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lightning_al.strategies.base import AcquisitionStrategy, check_aligned, check_k, top_k, uncertainty

Mode = Literal["power", "softmax", "softrank"]
MODES: tuple[str, ...] = ("power", "softmax", "softrank")


def log_weights(u: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """log w of BRIEF §2: power β·log u, softmax β·u, softrank -β·log rank (rank 1 = most uncertain,
    ties by pool order). A power weight of u = 0 is log 0 = -inf: such candidates come last, in pool order."""
    u = np.asarray(u, dtype=np.float64)
    if mode == "power":
        # u >= 0 by construction; rounding can leave -1e-9 on an entropy, which is 0 here.
        with np.errstate(divide="ignore"):
            return beta * np.log(np.maximum(u, 0.0)) if beta > 0 else np.zeros_like(u)
    if mode == "softmax":
        return beta * u
    if mode == "softrank":
        rank = np.empty(len(u))
        rank[np.argsort(-u, kind="stable")] = np.arange(1, len(u) + 1)
        return -beta * np.log(rank)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class StochasticSampling(AcquisitionStrategy):
    """Sample k candidates without replacement, with weights that grow with their uncertainty u.

    Args:
        score: The predict_step score whose uncertainty u weighs a candidate: entropy, confidence,
            margin, min_margin, max_entropy (u = the score, -confidence, or 1 - margin).
        mode: ``power``: w = u^β; ``softmax``: w = exp(β·u); ``softrank``: w = rank^(-β), rank 1 = most uncertain.
        beta: Sharpness β >= 0; 0 is uniform sampling, a large β tends to the top k.
    """

    def __init__(self, score: str = "entropy", mode: Mode = "power", beta: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        uncertainty(score, np.zeros(0))  # fails early on an unknown score
        self.score = score
        self.mode = mode
        self.beta = float(beta)

    def select(self, candidates, scores, k, rng, **inputs):
        check_k(candidates, k)
        check_aligned(f"{self.score} scores", scores, candidates)
        logw = log_weights(uncertainty(self.score, scores), self.mode, self.beta)
        # -inf + finite noise stays -inf, so zero-weight candidates tie and fall back to pool order.
        keys = logw + rng.gumbel(size=len(candidates))
        return np.sort(candidates[top_k(keys, k, highest=True)])
