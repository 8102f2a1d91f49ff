"""Per-example evaluation records under 2-process DDP: every example recorded once, adding up to
metrics.jsonl exactly (the single-process run: tests/test_evaluation.py); the diversity analysis, sharded
across the processes, measures what one process measures. The runs: the ``ddp_runs`` fixture (tests/conftest.py),
shared with the DDP acquisition test."""

import json
from collections import defaultdict

import numpy as np
import pytest

from tests.conftest import QUIZ


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _grouped(rows, value, weight=None):
    """(macro over tasks, micro, per task) of a per-example value, as the metrics compute them."""
    sums = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        sums[row["task"]][0] += row[value]
        sums[row["task"]][1] += 1 if weight is None else row[weight]
    per_task = {task: total / count for task, (total, count) in sums.items()}
    micro = sum(t for t, _ in sums.values()) / sum(c for _, c in sums.values())
    return float(np.mean(list(per_task.values()))), micro, per_task


def check_records_add_up(run_dir, round, metrics, sets):
    """Every aggregate of the round's metrics.jsonl rows from the round's records alone."""
    folder = run_dir / "evaluations" / f"round_{round}"
    loss = _read(folder / "heldout_loss.jsonl")
    _, micro, per_task = _grouped(loss, "nll", "tokens")
    heldout = metrics[(round, "heldout")]
    assert heldout["loss"] == micro  # exactly: float32 NLLs summed in float64 do not depend on the order
    assert heldout["loss/" + loss[0]["task"]] == per_task[loss[0]["task"]]
    for name, metric in sets.items():
        rows, values = _read(folder / f"{name}.jsonl"), metrics[(round, "heldout" if name == "heldout" else name)]
        macro, micro, per_task = _grouped(rows, "correct")
        assert values["examples"] == len(rows) == len({row["id"] for row in rows})
        assert values[f"{metric}_micro"] == micro
        assert values[metric] == macro
        assert all(values[f"{metric}/{task}"] == v for task, v in per_task.items())
        if "generation" in rows[0]:
            assert values["answered"] == np.mean([row["answer"] is not None for row in rows])
        else:
            assert all((row["chosen"] == row["target"]) == row["correct"] for row in rows)
    return loss


def test_ddp_records_each_example_once_and_the_heldout_loss_equals_one_process(ddp_runs):
    run_dir = ddp_runs.ddp
    metrics = {(row["round"], row["evaluation"]): row for row in _read(run_dir / "metrics.jsonl")}
    assert metrics[(0, "heldout")]["loss"] == pytest.approx(ddp_runs.heldout_loss, rel=1e-5)
    selection = next(row for row in _read(ddp_runs.single / "metrics.jsonl") if row["evaluation"] == "selection")
    for key in ("diversity", "diversity_labeled", "diversity_sample"):
        assert metrics[(0, "selection")][key] == pytest.approx(selection[key], rel=1e-5), key
    loss = check_records_add_up(run_dir, 0, metrics, {"heldout": "answer_exact_match", "quiz": "accuracy"})
    assert len(loss) == len({row["id"] for row in loss}) == 15  # odd sizes: the sampler repeats one example
    assert len(_read(run_dir / "evaluations" / "round_0" / "quiz.jsonl")) == len(QUIZ)
