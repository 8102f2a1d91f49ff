"""Paired bootstrap intervals on fabricated per-example records with a known effect, and the report's
paired tables computed from the records alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightning_al.report.bootstrap import example_weights, paired_difference, pool
from lightning_al.report.command import main
from lightning_al.report.paired import cell_pairs, detectable, holm, interval, paired_table, verdict
from lightning_al.report.records import aggregate
from lightning_al.report.runs import load_runs
from tests.test_report import write_run

TASKS = np.repeat(["a", "b", "c", "d"], 150)  # 600 examples


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def outcomes(rng, difficulty, shift, seeds):
    """(seeds, n) right / wrong answers: example i is right with probability sigmoid(difficulty_i + shift)."""
    return (rng.random((seeds, len(difficulty))) < sigmoid(difficulty + shift)).astype(float)


@pytest.mark.parametrize("seeds", [1, 3])
def test_interval_covers_a_known_effect_and_excludes_zero(seeds):
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    # The true effect on these examples: the mean over them of the difference of the probabilities.
    effect = float(np.mean(sigmoid(difficulty + 0.5) - sigmoid(difficulty)))
    a, b = outcomes(rng, difficulty, 0.5, seeds), outcomes(rng, difficulty, 0.0, seeds)
    ones = np.ones_like(a)
    d = paired_difference((a, ones), (b, ones), TASKS, macro=True, seeds_a=list(range(seeds)),
                          seeds_b=list(range(seeds)))
    assert d.low < effect < d.high and d.low > 0 and d.significant
    assert d.estimate == pytest.approx(a.mean() - b.mean())  # equal task sizes: macro = micro


def test_cells_without_a_common_seed_are_compared_unpaired():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    # Unpaired seeds, each cell's own seed variance counted: a larger effect than the paired tests' to be found.
    effect = float(np.mean(sigmoid(difficulty + 1.0) - sigmoid(difficulty)))
    a, b = outcomes(rng, difficulty, 1.0, 3), outcomes(rng, difficulty, 0.0, 2)
    d = paired_difference((a, np.ones_like(a)), (b, np.ones_like(b)), TASKS, macro=True, seeds_a=[0, 1, 2],
                          seeds_b=[3, 4])
    assert not d.paired_seeds and (d.seeds_a, d.seeds_b) == (3, 2)
    assert d.low < effect < d.high and d.low > 0


@pytest.mark.parametrize("seeds", [1, 3])
def test_interval_includes_zero_without_an_effect(seeds):
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    a, b = outcomes(rng, difficulty, 0.0, seeds), outcomes(rng, difficulty, 0.0, seeds)
    ones = np.ones_like(a)
    d = paired_difference((a, ones), (b, ones), TASKS, macro=False, seeds_a=list(range(seeds)),
                          seeds_b=list(range(seeds)))
    assert d.low < 0 < d.high and not d.significant


def test_loss_interval_of_a_ratio_metric():
    """Summed NLL over tokens: a known lower loss of A is found, and the estimate is the ratio of sums."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 60, len(TASKS)).astype(float)
    base = rng.gamma(2.0, 1.0, len(TASKS))  # per-token NLL of each example under B
    nll_b = tokens * base * rng.lognormal(0, 0.1, len(TASKS))
    nll_a = tokens * (base - 0.1) * rng.lognormal(0, 0.1, len(TASKS))
    d = paired_difference((nll_a, tokens), (nll_b, tokens), TASKS, macro=False)
    assert d.estimate == pytest.approx(nll_a.sum() / tokens.sum() - nll_b.sum() / tokens.sum())
    assert d.high < 0 and d.low < -0.1 * np.exp(0.005) < d.high


def test_intervals_cover_the_population_effect_about_95_percent_of_the_time():
    """Fresh examples and answers per experiment: the interval holds the population effect ~95% of the time."""
    rng = np.random.default_rng(3)
    population = rng.normal(0, 1.5, 1_000_000)
    effect = float(np.mean(sigmoid(population + 0.3) - sigmoid(population)))
    covered = []
    for experiment in range(100):
        difficulty = rng.normal(0, 1.5, len(TASKS))
        a, b = outcomes(rng, difficulty, 0.3, 1), outcomes(rng, difficulty, 0.0, 1)
        d = paired_difference((a, np.ones_like(a)), (b, np.ones_like(b)), TASKS, macro=False, replicates=400,
                              seed=experiment)
        covered.append(d.low < effect < d.high)
    assert 0.88 <= np.mean(covered) <= 1.0


@pytest.mark.parametrize("seeds", [3, 5])
def test_few_seeds_that_differ_by_training_do_not_make_false_verdicts(seeds):
    """No true difference, but each seed's training shifts its loss (sd 0.05, much more than the examples' noise):
    the interval must still hold 0 about 95% of the time. A bootstrap over 3 seeds held it 79-85% of the time."""
    rng = np.random.default_rng(seeds)
    covered = []
    for experiment in range(100):
        difficulty = rng.gamma(2.0, 1.0, len(TASKS))
        a, b = ((difficulty + rng.normal(0, 0.05, (seeds, 1)) + rng.normal(0, 0.1, (seeds, len(TASKS))))
                for _ in range(2))
        ones = np.ones_like(a)
        d = paired_difference((a, ones), (b, ones), TASKS, macro=False, seeds_a=list(range(seeds)),
                              seeds_b=list(range(seeds)), replicates=200, seed=experiment)
        covered.append(d.low < 0 < d.high)
        assert d.se_seeds > d.se_examples or experiment  # the seeds' part is found (checked on the first)
    assert 0.9 <= np.mean(covered) <= 1.0


def test_without_a_seed_effect_the_interval_stays_near_the_examples_one():
    """Seeds that differ only by the answers' own noise: the seeds' part counts that noise a second time (the
    interval errs wide), but it stays within 1.6x of the examples' interval, and holds 0 about 95% of the time."""
    rng = np.random.default_rng(7)
    widening, covered = [], []
    for experiment in range(40):
        difficulty = rng.normal(0, 1.5, len(TASKS))
        a, b = outcomes(rng, difficulty, 0.0, 3), outcomes(rng, difficulty, 0.0, 3)
        ones = np.ones_like(a)
        d = paired_difference((a, ones), (b, ones), TASKS, macro=False, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2],
                              replicates=300, seed=experiment)
        widening.append(d.se / d.se_examples)
        covered.append(d.low < 0 < d.high)
    assert np.median(widening) < 1.6 and np.mean(covered) >= 0.9


def test_pooled_seed_variance_is_the_two_way_residual():
    """A full grid of 4 cells x 3 seeds: the residual of cell + seed is the textbook two-way one, on (4-1)(3-1) df.
    A fifth cell of one run changes nothing (it only fixes its own mean); nor does a run of an unknown seed, of a
    seed repeated in its cell (a run folder passed twice) or with a NaN value: such runs do not pair."""
    rng = np.random.default_rng(11)
    y = rng.normal(0, 1, (4, 3)) + np.array([[0.0], [1], [2], [3]]) + np.array([0.5, -0.5, 2.0])
    residual = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    variance = pool(list(y), [[0, 1, 2]] * 4)
    assert variance.residual == pytest.approx((residual ** 2).sum() / 6) and variance.residual_df == 6
    extra = pool([*y, np.array([9.0]), np.array([1.0, 5.0]), np.array([np.nan, 3.0])],
                 [[0, 1, 2]] * 4 + [[1], [2, 2], [None, 0]])
    assert (extra.residual, extra.residual_df) == pytest.approx((variance.residual, 6))
    nan = pool([*y[:3], np.array([np.nan, *y[3, 1:]])], [[0, 1, 2]] * 4)
    assert np.isfinite(nan.residual) and nan.residual_df == 5


def test_pooled_intervals_hold_zero_and_are_narrower_in_a_grid_of_few_seeds():
    """Six cells of 3 seeds, no true difference, each run shifted by its training (sd 0.05) beyond a shared seed
    effect: intervals with the study's pooled variance (10 df instead of 2) still hold 0 about 95% of the time,
    and are narrower than each comparison's own (which the default keeps when it has one)."""
    from lightning_al.report.paired import cell_pairs

    rng = np.random.default_rng(12)
    cells = [(s, m) for s in ("random", "entropy", "confidence") for m in (1, 2)]
    held, ratio = [], []
    for study in range(15):
        difficulty = rng.gamma(2.0, 1.0, len(TASKS))
        seed_effect = rng.normal(0, 0.05, (3, 1))
        runs = {c: difficulty + seed_effect + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (3, len(TASKS)))
                for c in cells}
        pooled = pool([r.mean(axis=1) for r in runs.values()], [[0, 1, 2]] * len(cells))
        assert pooled.residual_df == 10
        for _, _, _, a, b in cell_pairs(cells):
            args = ((runs[a], np.ones_like(runs[a])), (runs[b], np.ones_like(runs[b])), TASKS, False, [0, 1, 2],
                    [0, 1, 2])
            d = paired_difference(*args, replicates=100, seed=study, pooled=pooled, always_pooled=True)
            own = paired_difference(*args, replicates=100, seed=study, pooled=pooled)
            assert d.estimate == own.estimate and d.df > own.df
            assert (d.seed_variance, own.seed_variance) == ("pooled", "own")
            held.append(d.low < 0 < d.high)
            ratio.append((d.high - d.low) / (own.high - own.low))
    assert np.mean(held) >= 0.9 and np.median(ratio) < 0.8


def test_a_lone_run_pairs_on_its_seed_and_takes_the_pooled_variance():
    """One run a cell of the same seed: without a study's pooled variance the interval holds the examples' noise
    only; with it, twice the residual variance of a run."""
    from lightning_al.report.bootstrap import SeedVariance

    rng = np.random.default_rng(13)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    a, b = outcomes(rng, difficulty, 0.0, 1), outcomes(rng, difficulty, 0.0, 1)
    args = ((a, np.ones_like(a)), (b, np.ones_like(b)), TASKS, False, [0], [0])
    alone = paired_difference(*args)
    pooled = paired_difference(*args, pooled=SeedVariance(0.0004, 10))
    assert alone.paired_seeds and alone.se_seeds == 0 and alone.df == np.inf and alone.seed_variance == "none"
    assert pooled.se_seeds == pytest.approx(np.sqrt(2 * 0.0004)) and pooled.df < np.inf
    assert pooled.se_examples == pytest.approx(alone.se_examples)


def test_cells_pair_on_the_seeds_they_share():
    """A has seeds 0, 1, 2 and B 0, 1 (its third unfinished): the comparison is paired on seeds 0 and 1 only."""
    rng = np.random.default_rng(8)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    a, b = outcomes(rng, difficulty, 0.5, 3), outcomes(rng, difficulty, 0.0, 2)
    d = paired_difference((a, np.ones_like(a)), (b, np.ones_like(b)), TASKS, macro=False, seeds_a=[0, 1, 2],
                          seeds_b=[0, 1])
    assert d.paired_seeds and (d.seeds_a, d.seeds_b) == (2, 2)
    assert d.estimate == pytest.approx(a[:2].mean() - b.mean())


def test_unknown_or_unshared_seeds_do_not_pair_and_a_lone_run_borrows_the_seed_variance():
    """Unknown seeds (None) never pair; A with seeds 0, 1, 2 against B's one run of seed 0 keeps all four runs,
    unpaired, B's run taking A's seed-to-seed variance (one training run varies as much as another)."""
    rng = np.random.default_rng(9)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    a, b = outcomes(rng, difficulty, 0.0, 3), outcomes(rng, difficulty, 0.0, 1)
    ones_a, ones_b = np.ones_like(a), np.ones_like(b)
    unknown = paired_difference((a, ones_a), (b, ones_b), TASKS, macro=False, seeds_a=[None] * 3, seeds_b=[None])
    lone = paired_difference((a, ones_a), (b, ones_b), TASKS, macro=False, seeds_a=[0, 1, 2], seeds_b=[0])
    for d in (unknown, lone):
        assert not d.paired_seeds and (d.seeds_a, d.seeds_b) == (3, 1)
        assert d.estimate == pytest.approx(a.mean() - b.mean())
    per_seed = a.mean(axis=1).var(ddof=1)
    assert lone.se_seeds == pytest.approx(np.sqrt(per_seed / 3 + per_seed)) and lone.df < 30


def test_a_difference_without_any_variance_is_undefined():
    """Every task of one example and one run a cell: nothing to judge a difference by, so no verdict."""
    tasks = np.array([f"t{i}" for i in range(6)])
    a, b = np.array([[1.0, 1, 1, 0, 1, 1]]), np.array([[0.0, 1, 0, 0, 1, 0]])
    d = paired_difference((a, np.ones_like(a)), (b, np.ones_like(b)), tasks, macro=True)
    assert d.se == 0 and not d.defined and verdict("m=2 − m=1", d, False) == "undefined"


def test_rescaled_resamples_have_the_tasks_full_variance():
    """Within a task of n examples, a plain resample's mean has (n - 1) / n of the variance s^2 / n; the rescaled
    weights have all of it (here n = 4, where the plain one would be 25% short)."""
    values = np.array([0.0, 1.0, 1.0, 3.0])
    weights = example_weights(np.array(["t"] * 4), 40_000, np.random.default_rng(0))
    np.testing.assert_allclose(weights.sum(axis=1), 4.0)
    assert (weights @ values / 4).var() == pytest.approx(values.var(ddof=1) / 4, rel=0.03)


def test_a_task_of_one_example_adds_the_variance_of_an_example_of_the_other_tasks():
    """A resample within tasks draws a task of one example as itself every time; its share of the variance comes
    from the other tasks' spread about their means. Here task "a" (two examples, differences 1 and 0: variance
    1/2) and task "b" of one: the mean over 2 tasks has a's bootstrap variance / 4 plus (1/2) / 4 for b."""
    def se_examples(tasks, a, b, macro=True):
        return paired_difference((np.array([a]), np.ones((1, len(a)))), (np.array([b]), np.ones((1, len(b)))),
                                 np.array(tasks), macro=macro).se_examples
    with_lone = se_examples(["a", "a", "b"], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    without = se_examples(["a", "a"], [1.0, 0.0], [0.0, 0.0])  # the same draws of task a
    assert with_lone**2 == pytest.approx(without**2 / 4 + 0.5 / 4)
    # A ratio of sums weighs each example by its share of the denominators: a's part (2/3)^2 of its own, b's 1/3.
    micro = se_examples(["a", "a", "b"], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], macro=False)
    assert micro**2 == pytest.approx(without**2 * 4 / 9 + 0.5 / 9)


def test_holm_adjusts_each_p_by_the_comparisons_left_and_keeps_the_order():
    """Holm's step-down: sorted p times (m - rank), never below an earlier one, capped at 1; NaN is outside."""
    adjusted = holm(np.array([0.04, 0.001, np.nan, 0.03, 0.5]))
    np.testing.assert_allclose(adjusted, [0.09, 0.004, np.nan, 0.09, 0.5])


def test_a_nan_in_the_records_is_undefined_not_within_noise():
    a = np.array([[1.0, 0.0, np.nan, 1.0] * 150])
    b = np.ones_like(a)
    d = paired_difference((a, np.ones_like(a)), (b, np.ones_like(b)), TASKS, macro=False)
    assert not d.defined and not d.significant and verdict("m=2 − m=1", d, False) == "undefined"


def test_an_interval_that_excludes_zero_never_prints_as_touching_it():
    from lightning_al.report.bootstrap import Difference

    d = Difference(0.025, 0.0004, 0.0496, 0.012, 600, 1, 1, True)
    assert interval(d) == "+0.0250 [+0.0004, +0.0496]"


def test_cell_pairs_compare_m_within_a_strategy_and_strategies_with_random():
    pairs = cell_pairs([("random", 1), ("random", 2), ("entropy", 1), ("entropy", 2), ("confidence", 2)])
    labels = [(kind, group, label) for kind, group, label, _, _ in pairs]
    assert labels == [("m", "random", "m=2 − m=1"), ("m", "entropy", "m=2 − m=1"),
                      ("strategy", "m=1", "entropy − random"), ("strategy", "m=2", "confidence − random"),
                      ("strategy", "m=2", "entropy − random")]


def _write_records(run_dir: Path, round: int, name: str, rows: list[dict]) -> None:
    folder = run_dir / "evaluations" / f"round_{round}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_report_makes_the_paired_tables_from_the_records_alone(tmp_path: Path) -> None:
    """Runs without metrics.jsonl: m=2 answers BBH better than m=1 (a known effect), entropy is random's equal."""
    rng = np.random.default_rng(4)
    difficulty = rng.normal(0, 1.5, len(TASKS))
    ids = [f"{task}/{i}" for i, task in enumerate(TASKS)]
    tokens = rng.integers(5, 40, 300)
    truth = {}
    for strategy in ("random", "entropy"):
        for m in (1, 2):
            for seed in (0, 1):
                run_dir = write_run(tmp_path / "study", strategy, m, seed, metrics=False)
                right = outcomes(rng, difficulty, 0.6 if m == 2 else 0.0, 1)[0]
                rows = [{"id": i, "task": t, "correct": int(c), "answer": "x", "target": "x", "generation": "..."}
                        for i, t, c in zip(ids, TASKS, right)]
                rows.append({**rows[0]})  # a repeated row counts once
                _write_records(run_dir, m - 1, "bbh", rows)
                nll = tokens * rng.gamma(4.0, 0.5, 300)
                _write_records(run_dir, m - 1, "heldout_loss",
                               [{"id": f"h{i}", "task": "t", "nll": float(x), "tokens": int(n)}
                                for i, (x, n) in enumerate(zip(nll, tokens))])
                truth[(strategy, m, seed)] = aggregate(right, np.ones_like(right), TASKS, macro=True)
    out = tmp_path / "out"
    main([str(tmp_path / "study"), "--out", str(out)])
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["key"]) == {"bbh/exact_match", "bbh/exact_match_micro", "heldout/loss"}
    row = paired[(paired["group"] == "entropy") & (paired["key"] == "bbh/exact_match")].iloc[0]
    expected = np.mean([truth[("entropy", 2, s)] - truth[("entropy", 1, s)] for s in (0, 1)])
    assert row["comparison"] == "m=2 − m=1" and row["examples"] == 600 and row["seeds_a"] == 2
    assert row["estimate"] == pytest.approx(expected) and row["low"] > 0
    assert row["verdict"].startswith("m=2 − m=1 = +") and row["verdict"].endswith("(m=2 better)")
    loss = paired[(paired["kind"] == "strategy") & (paired["key"] == "heldout/loss")]
    assert len(loss) == 2 and (loss["verdict"] == "within noise").all()
    # The p-value goes with the interval; Holm's family is the main metrics' 2 m + 2 strategy comparisons x 2.
    assert ((paired["p"] < 0.05) == ((paired["low"] > 0) | (paired["high"] < 0))).all()
    micro = paired["key"].str.endswith("_micro")
    assert paired.loc[micro, "p_holm"].isna().all() and (paired.loc[~micro, "p_holm"] >= paired.loc[~micro, "p"]).all()
    first = paired.loc[~micro].sort_values("p").iloc[0]
    assert (~micro).sum() == 8 and first["p_holm"] == pytest.approx(min(1.0, 8 * first["p"]))
    report = (out / "report.md").read_text()
    assert "8 intervals of the main metrics" in report and "- entropy: m=2 − m=1, bbh/exact_match (p_holm" in report
    detect = pd.read_csv(out / "detectable.csv").set_index("key")
    assert detect.loc["bbh/exact_match", "examples"] == 600
    assert 0.03 < detect.loc["bbh/exact_match_micro", "detectable (independent)"] < 0.09
    spread = pd.read_csv(out / "seed_variance.csv").set_index("key")
    values = np.array([[truth[(s, m, seed)] for seed in (0, 1)] for s in ("random", "entropy") for m in (1, 2)])
    # 4 cells x 2 seeds: a run's residual is half the per-cell difference of its seeds, less the mean one.
    gaps = values[:, 0] - values[:, 1]
    assert spread.loc["bbh/exact_match", "runs"] == 8 and spread.loc["bbh/exact_match", "df"] == 3
    assert spread.loc["bbh/exact_match", "sd of a run (pooled)"] == pytest.approx(np.sqrt(gaps.var(ddof=1) / 2))
    assert set(paired["seed_variance"]) == {"own"}  # every cell has 2 seeds
    main([str(tmp_path / "study"), "--out", str(tmp_path / "pooled"), "--seed_variance", "pooled"])
    pooled = pd.read_csv(tmp_path / "pooled" / "paired.csv")
    assert (pooled["estimate"] == paired["estimate"]).all() and (pooled["df"] != paired["df"]).any()
    assert set(pooled["seed_variance"]) == {"pooled"}
    text = (out / "report.md").read_text()
    assert "### How much a training run moves each metric" in text
    assert "## Paired comparisons" in text and "### Smallest detectable difference" in text
    assert "| within noise |" in text and "| m=2 better |" in text and "**entropy: m=2 − m=1** (A − B)" in text


def test_answered_table_counts_the_generations_whose_answer_was_read(tmp_path: Path) -> None:
    """answered.csv: per finished run and generative set, how many final-round answers the extraction read and
    how many of those were right; multiple-choice and loss records have no answer to read."""
    for seed, unread in ((0, 3), (1, 5)):
        run_dir = write_run(tmp_path / "study", "entropy", 2, seed, metrics=False)
        rows = [{"id": str(i), "task": "t", "correct": int(i in (5, 6, 7)), "target": "x", "generation": "...",
                 "answer": None if i < unread else ("" if i == unread else "x")} for i in range(10)]
        _write_records(run_dir, 1, "bbh", rows + rows[:1])  # a repeated row counts once
        _write_records(run_dir, 0, "bbh", [{**row, "answer": "x"} for row in rows])  # not the last round
        _write_records(run_dir, 1, "mmlu", [{"id": "q", "task": "t", "correct": 1, "chosen": 0}])
    write_run(tmp_path / "study", "entropy", 2, 2, done=1, metrics=False)  # unfinished: left out
    out = tmp_path / "out"
    main([str(tmp_path / "study"), "--out", str(out), "--no_plots"])
    table = pd.read_csv(out / "answered.csv")
    assert list(table["seed"]) == [0, 1] and set(table["set"]) == {"bbh"} and (table["examples"] == 10).all()
    # Seed 0: ids 0-2 unread, 3 empty; 6 read, ids 5-7 right. Seed 1: ids 0-4 unread, 5 empty; 4 read, 6-7 right.
    assert list(table["answered"]) == [6, 4] and list(table["answered_share"]) == [0.6, 0.4]
    assert table["right_when_answered"].tolist() == pytest.approx([3 / 6, 2 / 4])
    assert "| bbh | entropy | 2 | 2 | 0.5 ± 0.14 | 6 / 4 of 10 | 0.5 ± 0 |" in (out / "report.md").read_text()


def test_a_renamed_held_out_answer_set_keeps_its_metric_name(tmp_path: Path) -> None:
    """HeldOutAnswers(name="flan") logs flan/answer_exact_match; its records look like BBH's, so the report
    names them from the run's config, not from the file name (which would give flan/exact_match)."""
    import yaml

    rng = np.random.default_rng(15)
    for m in (1, 2):
        run_dir = write_run(tmp_path / "study", "random", m, 0, metrics=False)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["data"]["evaluations"] = [{"class_path": "lightning_al.evaluation.HeldOutAnswers",
                                          "init_args": {"name": "flan", "max_examples": 50}},
                                         {"class_path": "lightning_al.evaluation.BigBenchHard", "init_args": {}}]
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        for name in ("flan", "bbh"):
            _write_records(run_dir, m - 1, name, [{"id": str(i), "task": "t", "correct": int(c), "answer": "x",
                                                   "target": "x", "generation": "..."}
                                                  for i, c in enumerate(rng.random(50) < 0.5)])
    keys = set(pd.concat([paired_table(load_runs([tmp_path / "study"]))["key"]]))
    assert {"flan/answer_exact_match", "bbh/exact_match"} <= keys and "flan/exact_match" not in keys


def test_detectable_difference_of_a_task_average_weighs_each_task_by_its_size(tmp_path: Path) -> None:
    """A mean over tasks of 5 and 200 questions: its noise is mostly the small task's, which a pooled
    2.80·sqrt(2p(1−p)/n) over all 205 would hide."""
    from lightning_al.report.bootstrap import DETECTABLE_Z

    run_dir = write_run(tmp_path / "study", "random", 1, 0, metrics=False)
    right = {"a": [1, 1, 1, 0, 0], "b": [1, 0] * 100}
    _write_records(run_dir, 0, "bbh", [{"id": f"{t}/{i}", "task": t, "correct": c, "answer": "x", "target": "x",
                                         "generation": "..."} for t, cs in right.items() for i, c in enumerate(cs)])
    table = detectable(load_runs([tmp_path / "study"]), pd.DataFrame()).set_index("key")
    macro = DETECTABLE_Z * np.sqrt(2 * (0.6 * 0.4 / 5 + 0.5 * 0.5 / 200)) / 2
    micro = DETECTABLE_Z * np.sqrt(2 * (103 / 205) * (102 / 205) / 205)
    assert table.loc["bbh/exact_match", "detectable (independent)"] == pytest.approx(macro)
    assert table.loc["bbh/exact_match_micro", "detectable (independent)"] == pytest.approx(micro)


def test_the_committed_cpu_study_report_is_what_its_committed_records_give(tmp_path, monkeypatch):
    """`lightning-al report results/smollm2-cpu --out DIR` remakes the committed report from the committed records
    alone: a cell's records committed without the report made again fail here. Tables without resampling must
    match to the character; the intervals to 0.005 (another numpy may draw other resamples)."""
    from tests.conftest import REPO

    committed = REPO / "results" / "smollm2-cpu" / "report"
    monkeypatch.chdir(REPO)
    main(["results/smollm2-cpu", "--out", str(tmp_path), "--no_plots"])  # figures: test_report; they take half
    assert not any((tmp_path / "plots").iterdir())
    assert "_Figure not drawn (learning curves)" in (tmp_path / "report.md").read_text()
    for name in ("final.csv", "metrics.csv", "cost.csv", "overlap.csv", "selection.csv", "acquired.csv",
                 "answered.csv"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
    ours, theirs = (pd.read_csv(folder / "paired.csv") for folder in (tmp_path, committed))
    columns = ["kind", "group", "comparison", "key", "examples", "seeds_a", "seeds_b", "estimate"]
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])
    np.testing.assert_allclose(ours[["low", "high"]], theirs[["low", "high"]], atol=0.005)
    ours, theirs = (pd.read_csv(folder / "detectable.csv") for folder in (tmp_path, committed))
    pd.testing.assert_frame_equal(ours.iloc[:, :4], theirs.iloc[:, :4])
    ours, theirs = (pd.read_csv(folder / "seed_variance.csv") for folder in (tmp_path, committed))
    pd.testing.assert_frame_equal(ours, theirs, rtol=1e-9)
