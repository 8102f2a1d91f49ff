"""Uncertainty scores of pool examples: pure statistics of next-token distributions, and the
memory-bounded passes that compute them."""

from lightning_al.scoring.statistics import SCORE_NAMES, chunked_token_statistics, per_example_scores, token_statistics

__all__ = ["SCORE_NAMES", "chunked_token_statistics", "per_example_scores", "token_statistics"]
