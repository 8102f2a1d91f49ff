"""Tests of ``lightning_al.report`` on fabricated run directories (config.yaml, rounds/*.jsonl, metrics.jsonl)."""

from __future__ import annotations

import json
import math
import re
import statistics
import zlib
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightning_al import run_folder
from lightning_al.report import final_table, jaccard, load_run, load_runs, overlap_table, task_entropy
from lightning_al.report.command import main, make_report
from lightning_al.report.records import read_records
from lightning_al.report.selection import overlap_summary, selection_summary
from lightning_al.report.tables import cost_table, metrics_long, to_markdown

TASKS = ["copy", "reverse", "sort", "add"]
POOL = [f"{task}-{i:05d}" for i in range(10) for task in TASKS]  # 40 ids: runs of 24 overlap a lot
BUDGET = 24
CLASS = {"random": "RandomSampling", "entropy": "EntropySampling"}
SCORES = ("entropy", "confidence", "margin", "min_margin", "max_entropy", "num_tokens")


def heldout_loss(strategy: str, m: int, seed: int, r: int) -> float:
    """The fabricated held-out loss of a run after round r (final: r = m - 1)."""
    return 3.0 - 0.25 * r - 0.05 * m + 0.125 * seed + (0.5 if strategy == "entropy" else 0.0)


def write_run(root: Path, strategy: str, m: int, seed: int, done: int | None = None, metrics: bool = True) -> Path:
    """A run directory like the loop writes: ``done`` rounds (default all m) of round files and metrics rows."""
    name = f"{strategy}-m{m}-s{seed}"
    run_dir = root / name
    (run_dir / "rounds" / "round_0" / "adapter").mkdir(parents=True)  # adapters sit beside the round files
    (run_dir / "config.yaml").write_text(
        f"# lightning.pytorch==2.6.6\nseed_everything: {seed}\nrun_name: {name}\nmodel:\n  pretrained: null\n"
        f"data:\n  pool:\n    class_path: lightning_al.data.sources.SyntheticTasks\nloop:\n  budget: {BUDGET}\n"
        f"  rounds: {m}\n  strategy:\n    class_path: lightning_al.strategies.{CLASS[strategy]}\n"
        "  retraining: scratch\n  seed: null\n"
    )
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    ids = [str(i) for i in rng.choice(POOL, BUDGET, replace=False)]
    size = BUDGET // m
    done = m if done is None else done
    rows: list[str] = []
    for r in range(done):
        with open(run_dir / "rounds" / f"round_{r}.jsonl", "w") as f:
            for example in ids[r * size:(r + 1) * size]:
                row = {"id": example, "task": example.split("-")[0], "round": r,
                       "prompt_tokens": int(rng.integers(30, 60)), "response_tokens": int(rng.integers(2, 12))}
                if strategy == "entropy":
                    row |= {score: float(rng.random()) for score in SCORES}
                f.write(json.dumps(row) + "\n")
        labeled = (r + 1) * size
        base = {"round": r, "labeled": labeled, "epoch": 3 * r + 2, "step": 10 * r + 9}
        loss = heldout_loss(strategy, m, seed, r)
        rows += [json.dumps(row) for row in (
            {**base, "evaluation": "heldout", "loss": loss, "perplexity": math.exp(loss),
             "answer_exact_match": 0.1 * r, "answer_exact_match/copy": 0.2},
            {**base, "evaluation": "bbh", "exact_match": 0.2 + 0.01 * seed, "exact_match_micro": 0.25,
             "exact_match/boolean_expressions": 0.5, "exact_match/navigate": 0.3},
            {**base, "evaluation": "cost", "tokens_scored": 1000 * (r + 1) * (strategy == "entropy"),
             "scoring_passes": (r + 1) * (strategy == "entropy"), "scoring_seconds": 1.5, "tokens_trained": 500 * m,
             "eval_seconds": 2.0, "wall_seconds": 10.0 * (r + 1)},
            {**base, "evaluation": "selection", "diversity": 0.4 + 0.1 * r, "diversity_labeled": 0.45,
             "diversity_sample": 64},
        )]
    if metrics:
        (run_dir / "metrics.jsonl").write_text("".join(row + "\n" for row in rows))
    return run_dir


def ids_of(run_dir: Path) -> set[str]:
    """The run's final acquired set, read straight from its round files."""
    return {json.loads(line)["id"] for p in (run_dir / "rounds").glob("round_*.jsonl") for line in p.open()}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 strategies × m in {2, 3} × seeds {0, 1}, one of them two levels down, plus one unfinished run."""
    root = tmp_path_factory.mktemp("study")
    for strategy in ("random", "entropy"):
        for m in (2, 3):
            for seed in (0, 1):
                write_run(root / "nested" if (strategy, m, seed) == ("entropy", 3, 1) else root, strategy, m, seed)
    write_run(root, "entropy", 3, 2, done=1)
    return root


@pytest.fixture(scope="module")
def report(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_report([study], tmp_path_factory.mktemp("report") / "out")


def test_jaccard_and_task_entropy_on_hand_examples() -> None:
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard({"a"}, {"a"}) == 1.0
    assert jaccard(set(), set()) == 1.0
    assert jaccard({"a"}, set()) == 0.0
    assert task_entropy([]) == 0.0
    assert task_entropy(["copy"] * 3) == 0.0
    assert task_entropy(["a", "b", "a", "b"]) == pytest.approx(math.log(2))
    assert task_entropy(["a", "b", "c", "c"]) == pytest.approx(1.5 * math.log(2))


def test_load_runs_finds_nested_runs_and_reads_configs(study: Path) -> None:
    runs = load_runs([study])
    assert len(runs) == 9
    assert [r.strategy for r in runs[:4]] == ["random"] * 4  # the baseline first
    run = next(r for r in runs if r.name == "entropy-m3-s1")
    assert (run.strategy, run.rounds, run.seed, run.budget, run.retraining) == ("entropy", 3, 1, BUDGET, "scratch")
    assert run.score_column == "entropy" and run.finished
    assert len(run.acquired) == BUDGET and set(run.acquired["run"]) == {"entropy-m3-s1"}
    assert load_runs([study / "random-m2-s0", study])[0].name == "random-m2-s0"  # each run once


def test_make_report_writes_every_file_and_plot(report: Path) -> None:
    out = report.parent
    for name in ("report.md", "metrics.csv", "acquired.csv", "overlap.csv", "selection.csv", "cost.csv", "final.csv"):
        assert (out / name).is_file(), name
    plots = {p.name for p in (out / "plots").iterdir()}
    curves = {f"curve_{k}.png" for k in ("heldout_loss", "heldout_perplexity", "heldout_answer_exact_match",
                                         "bbh_exact_match", "bbh_exact_match_micro")}
    assert curves | {"final_metrics.png", "task_composition.png", "score_distributions.png", "lengths.png"} == plots
    text = report.read_text()
    for section in ("## Runs included", "## Final metrics by strategy × m", "## Cost per cell", "## Data selection",
                    "### Overlap between m values", "### Overlap between strategies", "## Learning curves"):
        assert section in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(plots) and all((out / link).is_file() for link in links)
    assert "Skipped" not in text
    acquired = pd.read_csv(out / "acquired.csv")
    assert {"run", "strategy", "m", "seed", "id", "task", "entropy"} <= set(acquired.columns)
    assert len(acquired) == 8 * BUDGET + BUDGET // 3
    metrics = pd.read_csv(out / "metrics.csv")
    assert not metrics["metric"].isin(["round", "labeled", "epoch", "step"]).any()
    assert "exact_match/navigate" in set(metrics["metric"])


def test_final_table_mean_std_per_cell(study: Path, report: Path) -> None:
    table = final_table(load_runs([study]))
    assert len(table) == 4 and not table.duplicated(["strategy", "m"]).any()
    assert list(table["strategy"]) == ["random", "random", "entropy", "entropy"]
    for _, row in table.iterrows():
        losses = [heldout_loss(row["strategy"], row["m"], seed, row["m"] - 1) for seed in (0, 1)]
        assert row["n_seeds"] == 2  # the unfinished entropy m=3 seed 2 is left out
        assert row["heldout/loss:mean"] == pytest.approx(statistics.mean(losses))
        assert row["heldout/loss:std"] == pytest.approx(statistics.stdev(losses))
        assert row["bbh/exact_match:mean"] == pytest.approx(0.205)
    assert not any(c.count("/") > 1 for c in table.columns)  # no per-task keys such as bbh/exact_match/navigate
    final_csv = pd.read_csv(report.parent / "final.csv")
    assert set(final_csv["key"]) == {"heldout/loss", "heldout/perplexity", "heldout/answer_exact_match",
                                     "bbh/exact_match", "bbh/exact_match_micro"}


def test_single_seed_cells_have_no_std(tmp_path: Path) -> None:
    for strategy in ("random", "entropy"):
        for m in (1, 2):
            write_run(tmp_path, strategy, m, seed=5)
    table = final_table(load_runs([tmp_path]))
    assert len(table) == 4 and set(table["n_seeds"]) == {1} and table["heldout/loss:std"].isna().all()
    assert "±" not in to_markdown(table)


def test_overlap_matches_sets_of_ids_from_round_files(study: Path, report: Path) -> None:
    runs = [r for r in load_runs([study]) if r.finished]
    overlap = overlap_table(runs)
    dirs = {r.name: r.path for r in runs}
    expected = 0
    for a, b in combinations(runs, 2):
        if a.seed == b.seed and ((a.strategy == b.strategy) != (a.rounds == b.rounds)):
            expected += 1
            row = overlap[((overlap["run_a"] == a.name) & (overlap["run_b"] == b.name))
                          | ((overlap["run_a"] == b.name) & (overlap["run_b"] == a.name))]
            ids_a, ids_b = ids_of(dirs[a.name]), ids_of(dirs[b.name])
            assert len(row) == 1
            assert row["jaccard"].item() == pytest.approx(len(ids_a & ids_b) / len(ids_a | ids_b))
    assert len(overlap) == expected == 8  # per seed: 2 m-pairs + 2 strategy-pairs
    summary = overlap_summary(overlap)
    one = summary[(summary["kind"] == "m") & (summary["group"] == "entropy")].iloc[0]
    values = [jaccard(ids_of(study / f"entropy-m2-s{s}"), ids_of(next(study.rglob(f"entropy-m3-s{s}"))))
              for s in (0, 1)]
    assert one["pair"] == "m=2 vs m=3" and one["n_seeds"] == 2
    assert one["jaccard_mean"] == pytest.approx(statistics.mean(values))
    assert one["jaccard_std"] == pytest.approx(statistics.stdev(values))
    assert len(pd.read_csv(report.parent / "overlap.csv")) == 8


def test_unfinished_run_is_marked(study: Path, report: Path) -> None:
    run = load_run(study / "entropy-m3-s2")
    assert not run.finished and run.rounds_done == 1
    assert re.search(r"entropy-m3-s2 \|.*\*\*unfinished\*\* \(1/3 rounds\)", report.read_text())
    cost = cost_table(load_runs([study]))
    assert not cost.set_index("run").loc["entropy-m3-s2", "finished"]
    no_metrics = write_run(study.parent / "no-metrics", "random", 2, 0, done=1, metrics=False)
    assert not load_run(no_metrics).finished


def test_selection_summary_reads_rounds_and_diversity(study: Path) -> None:
    summary = selection_summary(load_runs([study]))
    final = summary[(summary["scope"] == "final") & (summary["run"] == "entropy-m2-s0")].iloc[0]
    assert final["n"] == BUDGET and final["diversity"] == pytest.approx(0.45)
    rounds = summary[(summary["scope"] == "round") & (summary["run"] == "entropy-m2-s0")]
    assert list(rounds["n"]) == [12, 12] and list(rounds["diversity"]) == pytest.approx([0.4, 0.5])
    random_final = summary[(summary["scope"] == "final") & (summary["strategy"] == "random")]
    assert random_final["entropy_mean"].isna().all() and summary["prompt_tokens_mean"].notna().all()


def test_metrics_long_and_cost_use_last_rows(study: Path) -> None:
    runs = load_runs([study / "entropy-m2-s0"])
    long = metrics_long(runs)
    assert len(long[(long["evaluation"] == "heldout") & (long["round"] == 1)]) == 4
    cost = cost_table(runs).iloc[0]
    assert (cost["round"], cost["tokens_scored"], cost["scoring_passes"], cost["wall_seconds"]) == (1, 2000, 2, 20.0)


def test_missing_data_skips_figures_and_says_so(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "random", 2, 0, metrics=False)
    report = make_report([tmp_path / "runs"], tmp_path / "out")
    text = report.read_text()
    assert "Skipped figure (score distributions)" in text and "Skipped: no per-round metrics" in text
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"task_composition.png", "lengths.png"}


def test_malformed_lines_raise_naming_file_and_line(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "random", 2, 0)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], '{"round": 0, "evaluation": ', *lines[1:]]))
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2: malformed JSON"):
        load_run(run_dir)
    (run_dir / "rounds" / "round_1.jsonl").write_text('{"id": "a"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"round_1\.jsonl: line 3: expected a JSON object"):
        load_run(run_dir)


def test_bad_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_runs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories"):
        load_runs([tmp_path / "empty"])
    (tmp_path / "no-config" / "rounds").mkdir(parents=True)
    with pytest.raises(ValueError, match="no-config.*no config.yaml"):
        load_run(tmp_path / "no-config")
    (tmp_path / "no-rounds").mkdir()
    (tmp_path / "no-rounds" / "config.yaml").write_text("loop:\n  rounds: 2\n")
    with pytest.raises(ValueError, match="no-rounds.*no rounds/"):
        load_runs([tmp_path / "no-rounds"])


def test_cli_prints_where_the_report_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "runs", "entropy", 1, 0)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert str(tmp_path / "out" / "report.md") in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "nowhere" in capsys.readouterr().err


def test_run_folder_writes_what_the_report_reads_and_a_round_run_again_replaces_its_rows(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "entropy", 2, 0, done=0)
    rows = [{"round": r, "labeled": 12 * (r + 1), "evaluation": e, "loss": 1 / (r + 3), "nan": float("nan")}
            for r in (0, 1) for e in ("heldout", "cost")]
    run_folder.write_metrics(run_dir, 0, rows[:2])
    run_folder.write_metrics(run_dir, 1, rows[2:])
    # Byte for byte the lines of every run folder written so far, whose records the report must read.
    assert (run_dir / "metrics.jsonl").read_text() == "".join(json.dumps(row) + "\n" for row in rows)
    acquired = [{"id": "copy-00001", "task": "copy", "round": 0, "prompt_tokens": 31, "response_tokens": 4}]
    run_folder.write_round(run_dir, 0, acquired)
    assert (run_dir / "rounds" / "round_0.jsonl").read_text() == json.dumps(acquired[0]) + "\n"
    records = [{"id": "copy-00001", "task": "copy", "correct": 1}, {"id": "sort-00002", "task": "sort", "correct": 0}]
    run_folder.write_records(run_dir, 1, "bbh", records)
    assert (run_dir / "evaluations" / "round_1" / "bbh.jsonl").read_text() == "".join(
        json.dumps(row) + "\n" for row in records)
    run = load_run(run_dir)
    assert run.finished and run.rounds_done == 2 and list(run.acquired["id"]) == ["copy-00001"]
    assert read_records(run, 0) == {} and read_records(run, 1)["bbh"].to_dict("records") == records
    # A run resumed from a checkpoint taken before round 0's end evaluates round 0 again: its rows replace
    # the earlier ones, and those of later rounds go (round 1 is trained again too).
    again = [{**rows[0], "loss": 0.25}]
    run_folder.write_metrics(run_dir, 0, again)
    assert [json.dumps(row) for row in run_folder.read_metrics(run_dir)] == [json.dumps(row) for row in again]
    assert not load_run(run_dir).finished and load_run(run_dir).rounds_done == 1
