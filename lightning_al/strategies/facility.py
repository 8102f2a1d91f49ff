"""Facility location: the batch whose examples best stand in for the whole pool.

Maximise F(S) = Σ_i max_{j ∈ S ∪ L} sim(i, j) greedily, sim = cosine clipped at 0, L the labeled set.
The ground set (the i summed over) is the unlabeled candidates. Adding the labeled examples to it would
change nothing: each covers itself at sim 1 from the start, a constant of F that no choice moves.

F is monotone submodular, so a candidate's gain only shrinks as S grows: the greedy is lazy (a heap of
stale gains, which are upper bounds; only the top is recomputed). Small pools use the dense [N, N]
similarity; above ``dense_threshold`` each candidate keeps only its ``knn`` most similar candidates
(itself included), a graph built blockwise, and the coverage by the labeled set stays exact.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
import torch

from lightning_al.strategies.base import AcquisitionStrategy, check_aligned, check_k
from lightning_al.strategies.embeddings import nearest_similarity, unit_float32

#: Column j of the similarity: (the rows i it covers, sim(i, j) for them); rows may be ``slice(None)``.
Column = Callable[[int], tuple[np.ndarray | slice, np.ndarray]]


def _merge(best_values: torch.Tensor, best_columns: torch.Tensor, sims: torch.Tensor, first_column: int) -> None:
    """Keep, per row, the largest of the running top-k and one block of similarities (in place)."""
    knn = best_values.shape[1]
    top = torch.topk(torch.cat([best_values, sims], dim=1), knn, dim=1)
    from_block = top.indices >= knn
    kept = best_columns.gather(1, top.indices.clamp(max=knn - 1))
    best_columns.copy_(torch.where(from_block, top.indices - knn + first_column, kept))
    best_values.copy_(top.values)


def knn_graph(
    x: torch.Tensor, knn: int, block_rows: int = 4096, pair_limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse clipped similarity by column (CSC): column j holds the rows i that have j among their
    ``knn`` most similar rows (itself included), sorted by i. Returns (column pointers [N + 1], rows,
    float32 values).

    The similarity is symmetric, so only the blocks on and above the diagonal are computed ([block_rows,
    block_rows] each), and each serves the top-k of both its row block and its column block: half the
    products of a row-by-row pass, and sim(i, j) is the same number for i and for j. ``pair_limit`` stops
    after that many blocks (a benchmark times part of a large graph).
    """
    n = len(x)
    knn = min(knn, n)
    best_values = torch.full((n, knn), -torch.inf, device=x.device)
    best_columns = torch.full((n, knn), -1, dtype=torch.long, device=x.device)
    starts = range(0, n, block_rows)
    pairs = [(r, c) for r in starts for c in starts if c >= r]
    for r, c in pairs[:pair_limit]:
        sims = x[r : r + block_rows] @ x[c : c + block_rows].T
        rows, cols = slice(r, r + len(sims)), slice(c, c + sims.shape[1])
        if r == c:
            sims.fill_diagonal_(1.0)  # cos(i, i) is 1; float32 rounding would say 1 - 6e-8
        _merge(best_values[rows], best_columns[rows], sims, c)
        if r != c:
            _merge(best_values[cols], best_columns[cols], sims.T, r)
    rows = np.repeat(np.arange(n), knn)
    cols, vals = best_columns.cpu().numpy().ravel(), best_values.cpu().numpy().ravel()
    keep = vals > 0  # clipped at 0: a non-positive similarity covers nothing (and unfilled slots are -inf)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((rows, cols))
    pointers = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n), out=pointers[1:])
    return pointers, rows[order], vals[order]


def lazy_greedy(column: Column, n: int, k: int, covered: np.ndarray) -> tuple[list[int], list[float]]:
    """k greedy picks maximising Σ_i max(covered_i, sim(i, ·)); returns (positions, gains) in pick order.
    Equal gains go to the lowest position. ``covered`` (float64) is updated in place."""

    def gain(j: int) -> float:
        rows, sims = column(j)
        return float(np.maximum(sims - covered[rows], 0.0).sum())

    # Entries (-gain, j, picks when computed): j is unique, so the stamp never takes part in the order.
    heap = [(-gain(j), j, 0) for j in range(n)]
    heapq.heapify(heap)
    chosen: list[int] = []
    gains: list[float] = []
    while len(chosen) < k:
        negative, j, stamp = heapq.heappop(heap)
        if stamp != len(chosen):
            fresh = gain(j)
            if heap and (-fresh, j) > heap[0][:2]:
                heapq.heappush(heap, (-fresh, j, len(chosen)))
                continue
            negative = -fresh
        rows, sims = column(j)
        covered[rows] = np.maximum(covered[rows], sims)  # a column never holds a row twice
        chosen.append(j)
        gains.append(-negative)
    return chosen, gains


class FacilityLocation(AcquisitionStrategy):
    """Greedy facility location on the prompt embeddings: the candidates that add the most coverage
    Σ_i max_{j ∈ chosen ∪ labeled} max(cos(i, j), 0) of the unlabeled pool.

    Args:
        knn: Neighbours kept per candidate in the sparse similarity of large pools.
        dense_threshold: Pools up to this many candidates use the dense [N, N] similarity.
    """

    needs_embeddings = True

    def __init__(self, knn: int = 50, dense_threshold: int = 4096) -> None:
        if knn < 1:
            raise ValueError(f"knn must be >= 1, got {knn}")
        self.knn = knn
        self.dense_threshold = dense_threshold

    def greedy(self, embeddings, labeled_embeddings, k: int) -> tuple[list[int], list[float]]:
        """(positions, gains) of the k picks, in pick order."""
        x = unit_float32(embeddings)
        none = labeled_embeddings is None or len(labeled_embeddings) == 0
        with torch.inference_mode():
            covered = np.zeros(len(x))
            if not none:
                labeled = unit_float32(labeled_embeddings, x.device)
                covered = nearest_similarity(x, labeled).clamp_min(0).double().cpu().numpy()
            if len(x) <= self.dense_threshold:
                # Exactly symmetric with a unit diagonal, as cosine is: rounding would otherwise decide
                # between two candidates with equal gains (a pair covering each other) instead of pool order.
                sim = (x @ x.T).clamp_min_(0).fill_diagonal_(1.0)
                sim = torch.maximum(sim, sim.T).cpu().numpy()  # row j serves as column j (contiguous)
                return lazy_greedy(lambda j: (slice(None), sim[j]), len(x), k, covered)
            pointers, rows, vals = knn_graph(x, self.knn)
        vals = vals.astype(np.float64)
        return lazy_greedy(lambda j: (rows[pointers[j] : pointers[j + 1]], vals[pointers[j] : pointers[j + 1]]),
                           len(x), k, covered)

    def select(self, candidates, scores, k, rng, *, embeddings=None, labeled_embeddings=None, **inputs):
        check_k(candidates, k)
        check_aligned("embeddings", embeddings, candidates)
        chosen, _ = self.greedy(embeddings, labeled_embeddings, k)
        return np.sort(candidates[np.asarray(chosen, dtype=np.int64)])
