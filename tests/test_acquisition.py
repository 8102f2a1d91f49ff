"""Uncertainty acquisition through the loop and the predict command, single process and DDP."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_al.cli import main
from lightning_al.data.batching import IGNORE_INDEX
from tests.conftest import tiny_run_args
from tests.helpers import read_rounds

ENTROPY = "lightning_al.strategies.EntropySampling"


def test_entropy_round_acquires_the_highest_scores_of_the_pool(workdir):
    main(["fit", *tiny_run_args(workdir, **{"loop.strategy": ENTROPY, "loop.rounds": 2, "loop.epochs_per_round": 1})])
    rounds = read_rounds(workdir / "checkpoints" / "tiny")
    for r in (0, 1):
        assert all(np.isfinite(row["entropy"]) and row["num_tokens"] >= 1 for row in rounds[r])
    # Round 0 scores come from the initial model: `predict` without a checkpoint scores the whole
    # candidate set with that same model, and the acquired ids must be exactly its top-20 entropies.
    out = main(["predict", *tiny_run_args(workdir, **{"loop.strategy": ENTROPY})])
    scores = pd.read_json(workdir / "checkpoints" / "tiny" / "scores.jsonl", lines=True)
    # Each prompt's embedding from the same pass: unit length (float16 rounding).
    norms = np.linalg.norm(np.stack(scores["embedding"].to_numpy()).astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert len(scores) == len(out.datamodule.unlabeled_indices())
    top = scores.sort_values("entropy", ascending=False, kind="stable").head(20)
    assert set(top["id"]) == {row["id"] for row in rounds[0]}


def test_training_loss_ignores_prompt_tokens(workdir):
    cli = main(["fit", *tiny_run_args(workdir, **{"loop.rounds": 1, "loop.epochs_per_round": 1})])
    module, dm = cli.model.eval(), cli.datamodule
    batch = next(iter(dm.train_dataloader()))
    labels = batch["labels"]
    for row, index in enumerate(batch["index"].tolist()):
        prompt_length = dm.prompt_lengths[index]
        assert (labels[row, :prompt_length] == IGNORE_INDEX).all()
        assert (labels[row, prompt_length : prompt_length + dm.response_lengths[index]] != IGNORE_INDEX).all()
    with torch.no_grad():
        loss = module(batch["input_ids"], batch["attention_mask"], labels).loss
        logits = module(batch["input_ids"], batch["attention_mask"]).logits.double()
        # Naive reference: mean NLL over response tokens only.
        nll = []
        for row in range(labels.shape[0]):
            for t in range(1, labels.shape[1]):
                if labels[row, t] != IGNORE_INDEX:
                    nll.append(-torch.log_softmax(logits[row, t - 1], -1)[labels[row, t]])
        assert float(loss) == pytest.approx(float(torch.stack(nll).mean()), abs=1e-5)
        # Exactly the response tokens were counted: none of the prompt, none of the padding.
        assert len(nll) == int(sum(dm.response_lengths[i] for i in batch["index"].tolist()))


def test_ddp_two_processes_acquire_what_one_process_acquires(ddp_runs):
    """The ``ddp_runs`` fixture (tests/conftest.py): round 0 of entropy sampling in one process and in two."""
    single, ddp = (read_rounds(run_dir)[0] for run_dir in (ddp_runs.single, ddp_runs.ddp))
    assert len(single) == 24
    assert [row["id"] for row in ddp] == [row["id"] for row in single]
    for a, b in zip(single, ddp):
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-6)
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-6)
    # Its checkpoint holds each rank's RNG state (gathered as it was saved), loadable with weights_only.
    checkpoint = torch.load(ddp_runs.ddp / "last.ckpt", weights_only=True)
    loop = next(state for key, state in checkpoint["callbacks"].items() if key.startswith("ActiveLearningLoop"))
    assert len(loop["rng"]["ranks"]) == 2 and torch.equal(loop["rng"]["ranks"][0]["torch"], loop["rng"]["torch"])


def test_ddp_predict_writes_every_candidate_once(workdir, driver):
    """Lightning's predict loop shards without repeats, so two ranks score 53 and 52 of 105 candidates: the writer
    gathers the uneven shards (all_gather needs one shape on every rank) and writes each once, as one process does."""

    def args(cache):
        options = {"loop.strategy": ENTROPY, "data.pool.init_args.num_examples": 121, "data.eval_batch_size": 8}
        return [a for a in tiny_run_args(cache, **options) if not a.startswith("--loop.budget")]

    # Each run has a tokenized-pool cache of its own: neither reads a cache file the other is writing.
    ddp = driver.start(workdir, ["lightning-al", "predict", *args(workdir / "ddp-cache"), "--trainer.strategy=ddp",
                                 "--trainer.devices=2", "--scores.output_path=ddp.jsonl"])
    try:
        main(["predict", *args(workdir), "--scores.output_path=single.jsonl"])
    finally:
        code, log = driver.result(ddp)
    assert code == 0, log[-3000:]
    single, ddp = (pd.read_json(workdir / f"{name}.jsonl", lines=True) for name in ("single", "ddp"))
    assert len(single) == 105 and list(ddp["id"]) == list(single["id"])
    for score in ("entropy", "confidence"):
        np.testing.assert_allclose(ddp[score], single[score], rtol=1e-6, atol=1e-6)


def test_short_strategy_names_reach_the_loop_and_task_balanced_gets_the_tasks(workdir):
    main(["fit", *tiny_run_args(workdir, **{"loop.strategy": "task-balanced", "loop.rounds": 1,
                                            "loop.epochs_per_round": 1, "loop.budget": 30})])
    rows = read_rounds(workdir / "checkpoints" / "tiny")[0]
    counts = pd.Series([row["task"] for row in rows]).value_counts()
    assert len(rows) == 30 and counts.max() - counts.min() <= 1  # uniform quotas; every task has plenty
    assert all(np.isfinite(row["confidence"]) for row in rows)


@pytest.mark.parametrize("strategy, source", [("kcenter", "generated"), ("facility", "prompt"),
                                              ("power-entropy", "prompt"), ("softrank-confidence", "generated")])
def test_batch_aware_strategies_end_to_end(workdir, strategy, source):
    """Two rounds of each batch-aware strategy: round 1 sees the labels of round 0 (embedded by the
    retrained model for the diversity strategies), every id once, the whole budget spent."""
    main(["fit", *tiny_run_args(workdir, **{"loop.strategy": strategy, "model.score_source": source,
                                            "loop.epochs_per_round": 1, "loop.budget": 24,
                                            "data.pool.init_args.num_examples": 64})])  # 48 candidates
    rounds = read_rounds(workdir / "checkpoints" / "tiny")
    ids = [row["id"] for r in (0, 1) for row in rounds[r]]
    assert [len(rounds[0]), len(rounds[1])] == [12, 12] and len(set(ids)) == 24
    metrics = [json.loads(line) for line in (workdir / "checkpoints" / "tiny" / "metrics.jsonl").open()]
    cost = [m for m in metrics if m["evaluation"] == "cost"][-1]
    assert cost["tokens_scored"] > 0  # the embedding or scoring pass is accounted for
