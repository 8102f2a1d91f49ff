"""Acquisition strategies against brute-force references on small inputs (no model, a few seconds)."""

import numpy as np
import pytest
import torch

from lightning_al.strategies import (
    REGISTRY,
    AcquisitionStrategy,
    EntropySampling,
    FacilityLocation,
    KCenterGreedy,
    MaxTokenUncertainty,
    RandomSampling,
    StochasticSampling,
    TaskBalancedSampling,
    UncertaintySampling,
    name_of,
    strategy_from_name,
    strategy_from_spec,
    uncertainty,
)
from lightning_al.strategies.facility import knn_graph
from lightning_al.strategies.kcenter import k_center_greedy
from lightning_al.strategies.stochastic import log_weights


def unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def f64(x) -> np.ndarray:
    """What the strategies compute on: float32 rows, re-normalised (here in float64)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- uncertainty u


def test_uncertainty_is_higher_for_the_more_uncertain_example():
    assert uncertainty("entropy", [0.5, 2.0]).tolist() == [0.5, 2.0]
    assert uncertainty("max_entropy", [3.0]).tolist() == [3.0]
    assert uncertainty("confidence", [-0.1, -2.0]).tolist() == [0.1, 2.0]
    assert uncertainty("margin", [0.9, 0.25]).tolist() == pytest.approx([0.1, 0.75])
    assert uncertainty("min_margin", [1.0]).tolist() == [0.0]
    with pytest.raises(ValueError, match="num_tokens"):
        uncertainty("num_tokens", [1.0])
    with pytest.raises(ValueError, match="NaN"):
        uncertainty("entropy", [np.nan])


# ---------------------------------------------------------------- k-center greedy


def naive_k_center(x: np.ndarray, labeled: np.ndarray, k: int, first: int | None) -> list[int]:
    """O(N^2) farthest-first with the full distance matrix (float64)."""
    distance = 1 - x @ x.T
    nearest = (1 - x @ labeled.T).min(axis=1) if len(labeled) else np.full(len(x), np.inf)
    chosen = []
    if not len(labeled):
        chosen.append(first)
        nearest = np.minimum(nearest, distance[first])
    while len(chosen) < k:
        masked = nearest.copy()
        masked[chosen] = -np.inf
        chosen.append(int(np.argmax(masked)))
        nearest = np.minimum(nearest, distance[chosen[-1]])
    return chosen


@pytest.mark.parametrize("labeled_rows", [0, 6])
@pytest.mark.parametrize("shortlist", [1, 4, 512])
def test_k_center_is_naive_farthest_first(labeled_rows, shortlist):
    x, labeled = unit(90, seed=1), unit(labeled_rows, seed=2)
    xt, lt = torch.tensor(f64(x), dtype=torch.float32), torch.tensor(f64(labeled), dtype=torch.float32).reshape(-1, 8)
    first = 17 if not labeled_rows else None
    # A short shortlist goes through every path: pool updates, shortlists running out or overtaken.
    got = k_center_greedy(xt, lt, 60, first, shortlist=shortlist)
    assert got == naive_k_center(f64(x), f64(labeled).reshape(-1, 8), 60, first)


def test_k_center_select_seeds_its_start_and_takes_numpy_float16_or_torch():
    x = unit(50, seed=3)
    candidates = np.arange(100, 150)
    first = int(np.random.default_rng([4, 0]).integers(50))
    expected = np.sort(candidates[naive_k_center(f64(x.astype(np.float16)), np.zeros((0, 8)), 20, first)])
    for embeddings in (x.astype(np.float16), torch.tensor(x, dtype=torch.float16)):
        got = KCenterGreedy().select(candidates, None, 20, np.random.default_rng([4, 0]), embeddings=embeddings,
                                     labeled_embeddings=np.zeros((0, 8)))
        assert got.tolist() == expected.tolist()
    labeled = unit(5, seed=5)
    got = KCenterGreedy().select(candidates, None, 20, np.random.default_rng(0), embeddings=x,
                                 labeled_embeddings=labeled)
    assert got.tolist() == np.sort(candidates[naive_k_center(f64(x), f64(labeled), 20, None)]).tolist()


def test_k_center_ties_go_to_pool_order():
    # Duplicated rows: after the two distinct points are taken everything left is at distance 0.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    got = KCenterGreedy().select(np.arange(5), None, 4, np.random.default_rng(0), embeddings=x,
                                 labeled_embeddings=np.array([[1.0, 0.0]]))
    assert got.tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- facility location


def naive_gains(x: np.ndarray, labeled: np.ndarray, picks: list[int], sim: np.ndarray | None = None):
    """For each pick in order: F(S + pick) - F(S) from the full similarity, and the best gain available."""
    sim = np.clip(x @ x.T, 0, None) if sim is None else sim
    covered = np.clip(x @ labeled.T, 0, None).max(axis=1) if len(labeled) else np.zeros(len(x))
    increments, best = [], []
    for j in picks:
        gains = np.maximum(sim - covered[None, :], 0).sum(axis=1)  # row j: what adding j adds
        best.append(gains.max())
        after = np.maximum(covered, sim[j])
        increments.append(after.sum() - covered.sum())
        covered = after
    return np.array(increments), np.array(best)


@pytest.mark.parametrize("labeled_rows", [0, 5])
def test_facility_location_gains_are_naive_objective_increments(labeled_rows):
    x, labeled = unit(70, dim=6, seed=6), unit(labeled_rows, dim=6, seed=7).reshape(-1, 6)
    picks, gains = FacilityLocation().greedy(x, labeled, 40)
    assert len(set(picks)) == 40
    increments, best = naive_gains(f64(x), f64(labeled).reshape(-1, 6), picks)
    assert np.asarray(gains) == pytest.approx(increments, abs=1e-5)
    # Greedy: every pick adds the most any candidate could add at that step (up to float32 rounding).
    assert (increments >= best - 1e-5).all()
    assert (np.diff(gains) <= 1e-6).all()  # submodular: gains never grow


@pytest.mark.parametrize("labeled_rows", [0, 5])
def test_facility_location_sparse_equals_dense_when_knn_covers_the_pool(labeled_rows):
    x, labeled = unit(70, dim=6, seed=8), unit(labeled_rows, dim=6, seed=9).reshape(-1, 6)
    dense = FacilityLocation(dense_threshold=1000).greedy(x, labeled, 35)
    sparse = FacilityLocation(knn=70, dense_threshold=0).greedy(x, labeled, 35)
    assert sparse[0] == dense[0]
    assert sparse[1] == pytest.approx(dense[1], abs=1e-5)


@pytest.mark.parametrize("block_rows", [7, 60])
def test_knn_graph_holds_each_rows_top_k_whatever_the_blocks(block_rows):
    x = unit(60, dim=5, seed=15)
    pointers, rows, vals = knn_graph(torch.tensor(x, dtype=torch.float32), 6, block_rows=block_rows)
    full = np.clip(f64(x) @ f64(x).T, 0, None)
    np.fill_diagonal(full, 1.0)
    got = np.zeros_like(full)
    for j in range(60):
        got[rows[pointers[j] : pointers[j + 1]], j] = vals[pointers[j] : pointers[j + 1]]
    for i in range(60):
        top = np.argsort(-full[i], kind="stable")[:6]
        assert set(np.flatnonzero(got[i])) == {t for t in top if full[i, t] > 0}
    assert got[got > 0] == pytest.approx(full[got > 0], abs=1e-6)


def test_facility_location_sparse_graph_is_the_knn_sparsification():
    x = unit(60, dim=5, seed=10)
    knn = 7
    full = np.clip(f64(x) @ f64(x).T, 0, None)
    np.fill_diagonal(full, 1.0)
    sparse = np.zeros_like(full)
    for i in range(60):  # row i keeps its knn most similar (itself included)
        top = np.argsort(-full[i], kind="stable")[:knn]
        sparse[i, top] = full[i, top]
    # Column j of the sparse similarity (what adding j covers) is row j of its transpose.
    picks, gains = FacilityLocation(knn=knn, dense_threshold=0).greedy(x, None, 25)
    increments, best = naive_gains(f64(x), np.zeros((0, 5)), picks, sim=sparse.T)
    assert np.asarray(gains) == pytest.approx(increments, abs=1e-5)
    assert (increments >= best - 1e-5).all()


# ---------------------------------------------------------------- stochastic sampling


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_stochastic_k1_inclusion_frequencies_match_the_weights(mode):
    entropy = np.array([0.0, 0.2, 0.5, 1.0, 1.5, 0.7])
    weights = np.exp(log_weights(entropy, mode, beta=1.0))
    p = weights / weights.sum()
    draws = 10000
    strategy, candidates = StochasticSampling("entropy", mode), np.arange(6)
    counts = np.zeros(6)
    for seed in range(draws):
        counts[strategy.select(candidates, entropy, 1, np.random.default_rng([seed, 1]))[0]] += 1
    sigma = np.sqrt(p * (1 - p) / draws)
    assert (np.abs(counts / draws - p) <= 4 * sigma + 1e-12).all(), (counts / draws, p)


def test_stochastic_weights_of_each_mode():
    u = np.array([0.5, 2.0, 1.0])
    assert np.exp(log_weights(u, "power", 2.0)) == pytest.approx(u**2)
    assert np.exp(log_weights(u, "softmax", 2.0)) == pytest.approx(np.exp(2 * u))
    assert np.exp(log_weights(u, "softrank", 2.0)) == pytest.approx([3.0**-2, 1.0, 2.0**-2])
    # Confidence: u = -confidence, so the least confident has rank 1.
    strategy = StochasticSampling("confidence", "softrank", beta=50.0)
    assert strategy.select(np.arange(3), np.array([-0.1, -3.0, -1.0]), 1, np.random.default_rng(0)).tolist() == [1]


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_stochastic_with_a_large_beta_is_top_k(mode):
    scores = np.random.default_rng(11).uniform(0.1, 3.0, size=40)
    top = EntropySampling().select(np.arange(40), scores, 10, None)
    strategy = StochasticSampling("entropy", mode, beta=1e5)
    for seed in range(5):
        assert strategy.select(np.arange(40), scores, 10, np.random.default_rng(seed)).tolist() == top.tolist()


def test_power_sampling_takes_zero_uncertainty_last_in_pool_order():
    entropy = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
    for seed in range(10):
        got = StochasticSampling("entropy", "power").select(np.arange(5), entropy, 3, np.random.default_rng(seed))
        assert got.tolist() == [0, 1, 3]


# ---------------------------------------------------------------- task-balanced


def test_task_balanced_uniform_counts_with_a_short_task_and_remainders():
    # Pool order interleaves the tasks; names are not sorted in it. b has only 2 candidates.
    tasks = np.array(["c", "a", "b", "c", "a", "a", "c", "b", "a", "c", "a", "c", "a", "c", "a", "a", "c", "a"])
    confidence = -np.linspace(0.1, 1.8, len(tasks))  # later = less confident
    strategy = TaskBalancedSampling("confidence", "uniform")
    counts = lambda chosen: {t: int((tasks[chosen] == t).sum()) for t in "abc"}  # noqa: E731
    # k = 12: 4 each, b gives 2 back, split 1/1 between a and c.
    chosen = strategy.select(np.arange(len(tasks)), confidence, 12, None, tasks=tasks)
    assert counts(chosen) == {"a": 5, "b": 2, "c": 5}
    # k = 10: 10/3 each; floors 3/3/3, the one left goes to the first task in name order; b has 2: its
    # one missing goes to a (largest remainder among a, c, ties in name order).
    chosen = strategy.select(np.arange(len(tasks)), confidence, 10, None, tasks=tasks)
    assert counts(chosen) == {"a": 5, "b": 2, "c": 3}
    # k = 7: 7/3 each -> 3/2/2.
    assert counts(strategy.select(np.arange(len(tasks)), confidence, 7, None, tasks=tasks)) == {"a": 3, "b": 2, "c": 2}
    # Within a task, the least confident (highest u); here the latest positions of that task.
    chosen = strategy.select(np.arange(len(tasks)), confidence, 7, None, tasks=tasks)
    for t in "abc":
        members = np.flatnonzero(tasks == t)
        assert set(chosen[tasks[chosen] == t]) == set(members[-counts(chosen)[t]:])
    assert len(strategy.select(np.arange(len(tasks)), confidence, len(tasks), None, tasks=tasks)) == len(tasks)


def test_task_balanced_inverse_confidence_allocates_by_mean_uncertainty():
    tasks = np.array(["x"] * 10 + ["y"] * 10 + ["z"] * 10)
    confidence = np.concatenate([np.full(10, -1.0), np.full(10, -2.0), np.full(10, -5.0)])  # mean u 1, 2, 5
    strategy = TaskBalancedSampling("confidence", "inverse_confidence")
    assert strategy.quotas(tasks, uncertainty("confidence", confidence), 8) == {"x": 1, "y": 2, "z": 5}
    # Quotas 1.25 / 2.5 / 6.25 of 10: floors 1/2/6, the last one to y (largest remainder 0.5).
    assert strategy.quotas(tasks, uncertainty("confidence", confidence), 10) == {"x": 1, "y": 3, "z": 6}
    # k = 20: quotas 2.5 / 5 / 12.5 -> 3 / 5 / 12 (equal remainders: name order); z has only 10, and its
    # 2 are split again 1:2 between x and y (0.67 / 1.33 -> 0 / 1, the last one to x's larger remainder).
    quotas = strategy.quotas(tasks, uncertainty("confidence", confidence), 20)
    assert quotas == {"x": 4, "y": 6, "z": 10} and sum(quotas.values()) == 20
    chosen = strategy.select(np.arange(30), confidence, 20, None, tasks=tasks)
    assert len(chosen) == 20 and (tasks[chosen] == "z").sum() == 10


# ---------------------------------------------------------------- shared behaviour


def _inputs(n: int = 40):
    rng = np.random.default_rng(12)
    return dict(
        scores=rng.uniform(0.05, 2.0, size=n),
        embeddings=unit(n, seed=13).astype(np.float16),
        labeled_embeddings=unit(4, seed=14),
        tasks=np.array(["t1", "t2", "t3"])[rng.integers(3, size=n)],
    )


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_strategy_is_a_deterministic_function_of_its_inputs_and_seed(name):
    strategy = strategy_from_name(name)
    inputs = _inputs()
    scores = inputs.pop("scores")
    if strategy.score in ("confidence",):
        scores = -scores
    if strategy.score in ("margin", "min_margin"):
        scores = scores / 2
    candidates = np.arange(1000, 1040)
    runs = [strategy.select(candidates, scores, 15, np.random.default_rng([7, 2]), **inputs) for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist()
    assert len(runs[0]) == 15 and len(set(runs[0])) == 15 and (np.diff(runs[0]) > 0).all()
    assert set(runs[0]) <= set(candidates)


def test_old_strategies_accept_the_new_keyword_inputs():
    inputs = _inputs()
    scores = inputs.pop("scores")
    assert len(RandomSampling().select(np.arange(40), None, 5, np.random.default_rng(0), **inputs)) == 5
    assert EntropySampling().select(np.arange(40), scores, 3, None, **inputs).tolist() == \
        np.sort(np.argsort(-scores)[:3]).tolist()
    assert MaxTokenUncertainty().score == "max_entropy"
    assert MaxTokenUncertainty().select(np.arange(40), scores, 3, None).tolist() == \
        np.sort(np.argsort(-scores)[:3]).tolist()
    assert not EntropySampling.needs_embeddings and not EntropySampling.needs_tasks
    assert KCenterGreedy.needs_embeddings and KCenterGreedy.score is None
    assert TaskBalancedSampling.needs_tasks


def test_registry_round_trips_names():
    for name, entry in REGISTRY.items():
        strategy = strategy_from_name(name)
        assert isinstance(strategy, entry.cls) and name_of(strategy) == name
    assert {"random", "entropy", "confidence", "margin", "min_margin", "max_entropy", "kcenter", "facility",
            "power-entropy", "softmax-entropy", "softrank-entropy", "power-confidence", "softrank-confidence",
            "task-balanced", "task-balanced-confidence"} <= set(REGISTRY)
    assert name_of(strategy_from_name("softmax-confidence")) == "softmax-confidence"
    assert strategy_from_name("softmax-confidence").init_args() == {"score": "confidence", "mode": "softmax",
                                                                   "beta": 1.0}
    assert name_of(strategy_from_name("min-margin")) == "min_margin"
    assert name_of(strategy_from_name("lightning_al.strategies.EntropySampling")) == "entropy"
    for strategy in (StochasticSampling("margin", "softrank", beta=3.0), UncertaintySampling("margin", False),
                     FacilityLocation(knn=10), TaskBalancedSampling("entropy", "inverse_confidence")):
        name = name_of(strategy)
        again = strategy_from_name(name)
        assert type(again) is type(strategy) and again.init_args() == strategy.init_args(), name
    assert name_of(StochasticSampling("margin", "softrank", beta=3.0)) == "softrank-margin(beta=3.0)"
    assert name_of(UncertaintySampling("entropy")) == "uncertainty-entropy-highest"
    spec = {"class_path": "lightning_al.strategies.StochasticSampling", "init_args": {"mode": "softmax"}}
    assert name_of(strategy_from_spec(spec)) == "softmax-entropy"
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        strategy_from_name("nope")


def test_a_custom_strategy_keeps_the_base_defaults():
    class Mine(AcquisitionStrategy):
        def select(self, candidates, scores, k, rng, **inputs):
            return candidates[:k]

    assert not Mine.needs_embeddings and not Mine.needs_tasks and Mine.score is None
    assert name_of(Mine()) == "mine"
