"""Per-example evaluation records under 2-process DDP: every example recorded once, adding up to
metrics.jsonl exactly (the single-process run: tests/test_evaluation.py); the diversity analysis, sharded
across the processes, measures what one process measures."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from lightning_al.cli import main
from tests.conftest import tiny_run_args

QUIZ = [{"question": f"Pick {i}", "choices": ["x" * (i % 3 + 1), "y", "zz", "w"], "answer": i % 4,
         "subject": "odd" if i % 2 else "even"} for i in range(7)]  # 7: DDP pads one repeat


def _evaluations(workdir):
    quiz = workdir / "quiz.jsonl"
    quiz.write_text("".join(json.dumps(q) + "\n" for q in QUIZ))
    evaluations = [
        {"class_path": "lightning_al.evaluation.HeldOutAnswers", "init_args": {"max_new_tokens": 6}},
        {"class_path": "lightning_al.evaluation.MultipleChoice",
         "init_args": {"source": str(quiz), "name": "quiz", "num_fewshot": 0}},
    ]
    return json.dumps(evaluations)


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


def test_ddp_records_each_example_once_and_the_heldout_loss_equals_one_process(workdir):
    # lr 0: the model stays the initial one, so both runs evaluate the same model; 15 held-out examples
    # in batches of 4 on 2 ranks: the distributed sampler repeats one to pad, which must count once. The
    # diversity samples (15 of the 24 labels) are embedded in shards of 8 and 7 + one repeat.
    options = {"data.evaluations": _evaluations(workdir), "loop.rounds": 1, "loop.epochs_per_round": 1,
               "loop.budget": 24, "data.validation_size": 15, "data.eval_batch_size": 4, "loop.diversity_sample": 15,
               "model.optimizer": '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0}}'}
    single = main(["fit", *tiny_run_args(workdir, run_name="single", **options)])
    expected = float(single.trainer.callback_metrics["heldout/loss"])
    selection = next(row for row in _read(workdir / "checkpoints" / "single" / "metrics.jsonl")
                     if row["evaluation"] == "selection")
    args = tiny_run_args(workdir, **options)
    result = subprocess.run([sys.executable, "-m", "lightning_al", "fit", *args, "--trainer.strategy=ddp",
                             "--trainer.devices=2"], check=False, cwd=workdir, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = workdir / "checkpoints" / "tiny"
    metrics = {(row["round"], row["evaluation"]): row for row in _read(run_dir / "metrics.jsonl")}
    assert metrics[(0, "heldout")]["loss"] == pytest.approx(expected, rel=1e-5)
    for key in ("diversity", "diversity_labeled", "diversity_sample"):
        assert metrics[(0, "selection")][key] == pytest.approx(selection[key], rel=1e-5), key
    loss = check_records_add_up(run_dir, 0, metrics, {"heldout": "answer_exact_match", "quiz": "accuracy"})
    assert len(loss) == len({row["id"] for row in loss}) == 15  # odd sizes: the sampler repeats one example
    assert len(_read(run_dir / "evaluations" / "round_0" / "quiz.jsonl")) == len(QUIZ)
