"""Pre-emption safety: runs killed at every phase and resumed with ``--ckpt_path last`` end exactly as an
uninterrupted run; SIGTERM and Ctrl-C stop at a whole state with a non-zero exit and the resume command;
a truncated checkpoint is named and skipped; retention; the held-out loss counts each example once
under 2-process DDP.

The killed CLI runs are forked from one driver process (the imports, most of a run's start-up, happen once a
session: the ``driver`` fixture, tests.helpers.Driver) and kill themselves with ``tests.kill_switch.KillAt`` at named
phases, so nothing depends on timing; the uninterrupted run runs in this process meanwhile.
"""

import json
import os
import shlex

import pytest
import torch

from lightning_al.checkpointing import CheckpointError, check_checkpoint, resolve_checkpoint, resume_command
from lightning_al.cli import main
from lightning_al.evaluation.metrics import ExampleMean
from tests.conftest import SHORT_ANSWERS, tiny_run_args
from tests.helpers import read_rounds

ENTROPY = "lightning_al.strategies.EntropySampling"

def _results(run_dir):
    ids = read_rounds(run_dir)  # the ids of every round and their scores
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Costs (wall time, passes) differ by design in a resumed run; everything else must not.
    metrics = {(row["round"], row["evaluation"]): row for row in rows if row["evaluation"] != "cost"}
    return ids, metrics


def test_killed_at_every_phase_resumes_to_the_uninterrupted_result(workdir, driver):
    def args(run_name, *extra, cache_dir=workdir):
        options = {"loop.strategy": ENTROPY, "model.score_source": "prompt", "data.evaluations": SHORT_ANSWERS,
                   "checkpoint.every_n_train_steps": 2, "checkpoint.every_n_minutes": "null",
                   "checkpoint.scores_every_n_batches": 1,
                   "data.score_batch_tokens": "null"}  # batches of eval_batch_size rows: the phases count them
        return ["lightning-al", "fit", *tiny_run_args(cache_dir, run_name=run_name, **options), *extra]

    # Round 0 trains on 20 labels (3 batches: steps 1-3, 4-6), round 1 on 40 (5 batches: steps 7-11, 12-16);
    # a checkpoint every 2 steps (not at an epoch's last batch) and after every scoring batch.
    phases = ["scoring:0:3", "acquired:0", "step:5", "eval:1", "scoring:1:3", "step:9@SIGTERM", "step:13@SIGINT"]
    kill = json.dumps({"class_path": "tests.kill_switch.KillAt",
                       "init_args": {"phases": phases, "marker_dir": str(workdir / "markers")}})
    command = args("killed", f"--trainer.callbacks=[{kill}]")
    run_dir = workdir / "checkpoints" / "killed"
    codes, logs = [], []
    for attempt in range(len(phases) - 1):
        started = driver.start(workdir, command + ["--ckpt_path", "last"] * (attempt > 0))
        if attempt == 0:  # the uninterrupted run, in this process beside the first one (its own pool cache)
            try:
                main(args("reference", cache_dir=workdir / "reference-cache")[1:])
            finally:
                code, log = driver.result(started)
        else:
            code, log = driver.result(started)
        codes.append(code)
        logs.append(log)
    assert codes == [-9] * 5 + [143], (codes, [log[-1500:] for log in logs])
    # Killed before any checkpoint: --ckpt_path last says so and starts again, reusing the scores.
    assert "no loadable checkpoint" in logs[1] and "continuing a saved pass" in logs[1]
    # Killed at step 5 and during round 0's evaluation: both resume mid-epoch 1, after step 4.
    assert "(epoch 1, global step 4)" in logs[3] and "(epoch 1, global step 4)" in logs[4]
    assert "continuing a saved pass" in logs[5]  # round 1's pass after its kill
    # SIGTERM: checkpointed at the step, non-zero exit, and the exact command that resumes.
    resume = shlex.join(command + ["--ckpt_path", "last"])
    assert f"Resume with:\n  {resume}" in logs[5], logs[5][-2000:]
    # A truncated last.ckpt: named, and the newest loadable checkpoint takes over (round 1's start).
    last = run_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    code, log = driver.run(workdir, shlex.split(resume))
    assert "checkpoint checkpoints/killed/last.ckpt cannot be loaded" in log
    assert "Resuming from the newest loadable one instead: checkpoints/killed/round=1.ckpt" in log
    assert "weights_only=False" not in log
    # Ctrl-C (SIGINT) mid-epoch 3: checkpointed at that step, exit 130, the resume command.
    assert code == 130 and f"Stopped by SIGINT; checkpoint checkpoints/killed/last.ckpt (epoch 3, step 13). " \
        f"Resume with:\n  {resume}" in log, (code, log[-3000:])
    code, log = driver.run(workdir, shlex.split(resume))
    assert code == 0 and "(epoch 3, global step 13)" in log, log[-3000:]
    assert _results(run_dir) == _results(workdir / "checkpoints" / "reference")
    # Retention: last.ckpt and the checkpoints right after each acquisition; no partial scores left.
    assert sorted(p.name for p in run_dir.glob("*.ckpt")) == ["last.ckpt", "round=0.ckpt", "round=1.ckpt"]
    assert not list((run_dir / "scoring").glob("*"))


def test_checkpoint_errors_name_the_file_and_last_falls_back(workdir, capsys):
    run_dir = workdir / "run"
    run_dir.mkdir()
    assert resolve_checkpoint(run_dir, "last") is None  # nothing yet: a fresh start, said in one line
    good = run_dir / "round=0.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, good)
    (run_dir / "last.ckpt").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="last.ckpt cannot be loaded") as error:
        check_checkpoint(run_dir / "last.ckpt")
    assert "weights_only=False" not in str(error.value)
    with pytest.warns(UserWarning, match="Resuming from the newest loadable one instead"):
        assert resolve_checkpoint(run_dir, "last") == str(good)
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        resolve_checkpoint(run_dir, run_dir / "missing.ckpt")
    assert resume_command(["/usr/bin/lightning-al", "fit", "--run_name=x", "--ckpt_path", "a.ckpt"]) == \
        "lightning-al fit --run_name=x --ckpt_path last"
    assert resume_command(["lightning-al", "study", "--config=s.yaml"]) == "lightning-al study --config=s.yaml"


def test_example_mean_counts_repeated_examples_once():
    metric = ExampleMean()
    metric.update(torch.tensor([2.0, 9.0]), torch.tensor([0, 1]), torch.tensor([1, 3]))
    metric.update(torch.tensor([9.0]), torch.tensor([1]), torch.tensor([3]))  # a DDP padding repeat
    assert float(metric.compute()) == pytest.approx(11 / 4)
