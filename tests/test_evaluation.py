"""End-of-round evaluation: log-likelihood choices against a naive reference, batched generation
against one-at-a-time generation, and a run that writes metrics.jsonl and TensorBoard scalars."""

import json
from types import SimpleNamespace

import datasets
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_al.cli import main
from lightning_al.data.batching import CausalLMCollator
from lightning_al.datamodule import ActiveLearningDataModule
from lightning_al.evaluation import HeldOutAnswers, MultipleChoice
from lightning_al.evaluation.likelihood import choice_logprobs
from lightning_al.evaluation.metrics import ExampleMean, GroupedAccuracy
from lightning_al.model.inference import greedy_generate
from lightning_al.model.loading import load_causal_lm, load_tokenizer
from tests.conftest import REPO, SHARED, TINY_LLAMA, tiny_run_args
from tests.test_records import check_records_add_up

BBH = SHARED / "data" / "bbh"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("char")
    model = load_causal_lm(None, json.loads(TINY_LLAMA), tokenizer).eval()
    return model, tokenizer


def _left_padded(tokenizer, prompts):
    rows = [{"input_ids": tokenizer(p)["input_ids"], "index": i} for i, p in enumerate(prompts)]
    for row in rows:
        row.update(prompt_length=len(row["input_ids"]), content_start=0, content_end=len(row["input_ids"]))
    return CausalLMCollator(tokenizer.pad_token_id, padding_side="left", prompt_only=True)(rows)


def _naive_logprob(model, prompt_ids, continuation):
    ids = torch.tensor([prompt_ids + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(continuation))


@pytest.mark.parametrize("continuations", [[" A", " B", " C", " D"], ["A", "B", "C"]], ids=["multi-token", "one-token"])
def test_choice_logprobs_equal_a_naive_reference(tiny, continuations):
    model, tokenizer = tiny
    prompts = ["Q: 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", "Which?\nA. x\nB. y\nC. z\nAnswer:", "Hi\nAnswer:"]
    batch = _left_padded(tokenizer, prompts)
    tokens = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations] for _ in prompts]
    got = choice_logprobs(model, batch, tokens)
    for i, prompt in enumerate(prompts):
        expected = [_naive_logprob(model, tokenizer(prompt)["input_ids"], t) for t in tokens[i]]
        torch.testing.assert_close(got[i].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = ["abc", "a much longer prompt here", "xy"]
    batch = _left_padded(tokenizer, prompts)
    stop = [tokenizer.eos_token_id]
    batched = greedy_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], 12, stop)
    for prompt, text in zip(prompts, batched):
        single = _left_padded(tokenizer, [prompt])
        assert greedy_generate(model, tokenizer, single["input_ids"], single["attention_mask"], 12, stop) == [text]


def test_grouped_accuracy_macro_and_micro():
    metric = GroupedAccuracy(["a", "b", "c"], example_groups=[0, 0, 1, 1, 2])
    metric.update(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 2]))
    metric.update(torch.tensor([1.0]), torch.tensor([3]))
    result = metric.compute()
    assert result["groups"] == {"a": 0.5, "b": 1.0}  # c has no examples: left out of the macro average
    assert float(result["macro"]) == 0.75 and float(result["micro"]) == 0.75 and float(result["examples"]) == 4


def test_grouped_accuracy_counts_an_example_repeated_on_two_ranks_once():
    """DDP pads a rank's shard with repeated examples; merging the ranks' states must not count them twice."""
    rank0, rank1 = (GroupedAccuracy(["a"], example_groups=[0, 0, 0]) for _ in range(2))
    rank0.update(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    rank1.update(torch.tensor([0.0, 1.0]), torch.tensor([2, 0]))  # example 0 again (the padding)
    rank0.merge_state(rank1)
    result = rank0.compute()
    assert float(result["examples"]) == 3 and float(result["micro"]) == pytest.approx(1 / 3)


def test_grouped_accuracy_keeps_the_first_rank_s_answer_to_a_repeated_example():
    """A padding repeat answered differently (another batch, low precision): the first rank's answer counts, as
    in the per-example records, not whichever was right. (The states gathered in rank order, as under DDP.)"""
    ranks = [GroupedAccuracy(["a"], example_groups=[0, 0, 0, 0], sync_on_compute=False) for _ in range(3)]
    ranks[0].update(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    ranks[1].update(torch.tensor([0.0, 1.0]), torch.tensor([2, 1]))  # example 1 again, answered right this time
    ranks[2].update(torch.tensor([1.0]), torch.tensor([3]))
    states = [metric.metric_state for metric in ranks]

    def gather(tensor, group=None):
        name = next(key for key, value in states[0].items() if value is tensor)
        return [state[name].clone() for state in states]

    ranks[0].sync(dist_sync_fn=gather, distributed_available=lambda: True)
    result = ranks[0].compute()
    assert float(result["examples"]) == 4 and float(result["micro"]) == pytest.approx(2 / 4)


def _write_choices(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHOICES = [
    {"question": "Copy 'ab'", "choices": ["ab", "ba"], "answer": 0, "subject": "strings"},
    {"question": "Reverse 'ab'", "choices": ["ab", "ba", "aa"], "answer": "B", "subject": "strings"},
    {"question": "1+1", "choices": ["1", "2", "3", "4"], "answer": 1, "subject": "math"},
]


@pytest.mark.parametrize("budgeted", [False, True])
def test_multiple_choice_accuracy_equals_a_naive_reference(tiny, tmp_path, budgeted):
    model, tokenizer = tiny
    rows = [{"question": f"Pick {i}", "choices": ["x" * (i % 3 + 1), "y", "zz", "w"], "answer": i % 4}
            for i in range(10)]
    evaluation = MultipleChoice(source=str(_write_choices(tmp_path / "mc.jsonl", rows)), num_fewshot=0)
    evaluation.prepare(tokenizer, held_out=datasets.Dataset.from_dict({}))  # a set that needs no held-out rows
    module = SimpleNamespace(model=model)
    got, sizes = {}, []
    # Budgeted: 3 rows of the longest prompt a batch, where fixed batches hold 4.
    batch_tokens = 3 * max(row["prompt_length"] for row in evaluation.rows) if budgeted else None
    for batch in evaluation.dataloader(4, 0, tokenizer.pad_token_id, batch_tokens):
        got.update(zip(batch["index"].tolist(), evaluation.correct(module, batch).tolist()))
        sizes.append(len(batch["index"]))
    assert sum(sizes) == len(rows) and max(sizes) == (3 if budgeted else 4)
    expected = {}
    for i, row in enumerate(evaluation.rows):
        scores = [_naive_logprob(model, row["input_ids"], c) for c in row["continuations"]]
        expected[i] = float(scores.index(max(scores)) == row["answer"])
    assert got == expected


def test_run_writes_metrics_for_every_evaluation_set(workdir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # the printed validate table: every dataloader's column side by side
    choices = _write_choices(workdir / "mc.jsonl", CHOICES)
    evaluations = [
        {"class_path": "lightning_al.evaluation.HeldOutAnswers", "init_args": {"max_new_tokens": 8}},
        {"class_path": "lightning_al.evaluation.BigBenchHard",
         "init_args": {"path": str(BBH), "tasks": ["boolean_expressions", "navigate"], "max_examples_per_task": 2,
                       "max_new_tokens": 8, "rounds": [-1]}},  # the last round only
        {"class_path": "lightning_al.evaluation.MultipleChoice",
         "init_args": {"source": str(choices), "name": "quiz", "num_fewshot": 0}},
    ]
    args = tiny_run_args(workdir, **{"data.evaluations": json.dumps(evaluations), "loop.epochs_per_round": 2})
    main(["fit", *args])
    run_dir = workdir / "checkpoints" / "tiny"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_key = {(r["round"], r["evaluation"]): r for r in rows}
    assert sorted(by_key) == sorted([(r, e) for r in (0, 1) for e in ("heldout", "quiz", "cost", "selection")]
                                    + [(1, "bbh")])
    # Per-example records of every set that ran, adding up exactly to the round's metrics.
    assert sorted(p.name for p in (run_dir / "evaluations" / "round_0").iterdir()) == [
        "heldout.jsonl", "heldout_loss.jsonl", "quiz.jsonl"]
    check_records_add_up(run_dir, 0, by_key, {"heldout": "answer_exact_match", "quiz": "accuracy"})
    check_records_add_up(run_dir, 1, by_key,
                         {"heldout": "answer_exact_match", "quiz": "accuracy", "bbh": "exact_match"})
    bbh_rows = [json.loads(line) for line in (run_dir / "evaluations" / "round_1" / "bbh.jsonl").open()]
    assert {row["id"].split("/")[0] for row in bbh_rows} == {"boolean_expressions", "navigate"}
    assert {"answer", "target", "generation", "correct"} <= set(bbh_rows[0])
    assert [by_key[(r, "heldout")]["labeled"] for r in (0, 1)] == [20, 40]
    bbh = by_key[(1, "bbh")]
    assert bbh["examples"] == 4 and set(bbh) >= {"exact_match", "exact_match_micro", "exact_match/navigate"}
    quiz = by_key[(1, "quiz")]
    assert quiz["examples"] == 3 and 0 <= quiz["accuracy"] <= 1 and {"accuracy/math", "accuracy/strings"} <= set(quiz)
    assert {"loss", "perplexity", "answer_exact_match"} <= set(by_key[(0, "heldout")])
    cost0, cost1 = by_key[(0, "cost")], by_key[(1, "cost")]
    assert 0 < cost0["tokens_trained"] < cost1["tokens_trained"] and cost1["eval_seconds"] > 0
    assert 0 <= by_key[(1, "selection")]["diversity"] <= 2
    events = EventAccumulator(str(workdir / "lightning_logs" / "tiny")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("heldout/loss", "bbh/exact_match", "quiz/accuracy", "round/bbh/exact_match", "labeled/quiz/accuracy",
                "labeled/heldout/answer_exact_match", "bbh/exact_match/boolean_expressions"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("labeled/heldout/loss")] == [20, 40]
    # The same evaluation from the last checkpoint, through `validate`.
    capsys.readouterr()
    cli = main(["validate", *args, f"--ckpt_path={run_dir / 'last.ckpt'}"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["quiz/examples"]) == 3 and "bbh/exact_match" in metrics
    assert float(metrics["heldout/loss"]) == pytest.approx(by_key[(1, "heldout")]["loss"], rel=1e-5)
    check_each_metric_once(capsys.readouterr().out, cli, {"heldout_loss": "heldout", "heldout": "heldout",
                                                          "bbh": "bbh", "quiz": "quiz"})


def check_each_metric_once(printed, cli, prefix_of_loader):
    """`validate` prints and returns each metric once, in the column of the dataloader of its set, and
    the dataloaders are named after the sets (the printed table used to repeat every metric in every
    column)."""
    assert list(cli.trainer.val_dataloaders) == list(prefix_of_loader)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in printed.splitlines() if line.startswith("│")]
    names = [row[0] for row in rows]
    assert len(names) == len(set(names)) and set(names) == set(cli.trainer.callback_metrics)  # whole names
    assert all(sum(bool(value) for value in row[1:]) == 1 for row in rows), printed
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    assert len(results) == len(prefix_of_loader)
    for result, prefix in zip(results, prefix_of_loader.values()):
        assert result and all(key.startswith(prefix + "/") for key in result)
    assert sum(len(result) for result in results) == len(set().union(*results))  # no metric twice


def test_an_evaluation_name_names_one_dataloader_file_and_metric_prefix():
    with pytest.raises(ValueError, match="without '/' or '.'"):
        HeldOutAnswers(name="held/out")
    with pytest.raises(ValueError, match="'heldout_loss' is the held-out loss's"):
        ActiveLearningDataModule(evaluations=[HeldOutAnswers(name="heldout_loss")])
    with pytest.raises(ValueError, match="its own non-empty name"):
        ActiveLearningDataModule(evaluations=[HeldOutAnswers(), HeldOutAnswers()])


def test_example_mean_of_no_example_is_nan():
    """The held-out loss of an empty held-out split (validation_size 0 beside another evaluation set)."""
    assert torch.isnan(ExampleMean().compute())


def test_demo_config_writes_metrics_and_tensorboard(workdir):
    """The embedded demo (shortened: 1 epoch a round, 10 labels a round): per-round metrics.jsonl rows and
    TensorBoard scalars."""
    main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--loop.epochs_per_round=1", "--loop.budget=30",
          "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false", f"--data.cache_dir={workdir}"])
    rows = [json.loads(line) for line in (workdir / "checkpoints" / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["evaluation"]) for r in rows] == [
        (r, e) for r in (0, 1, 2) for e in ("heldout", "cost", "selection")]
    assert all(0 <= r["answer_exact_match"] <= 1 and r["examples"] == 500 for r in rows if r["evaluation"] == "heldout")
    tags = set(EventAccumulator(str(workdir / "lightning_logs" / "demo")).Reload().Tags()["scalars"])
    assert {"heldout/loss", "heldout/answer_exact_match", "labeled/heldout/answer_exact_match"} <= tags
