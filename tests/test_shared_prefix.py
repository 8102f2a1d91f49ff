"""Few-shot generation with the shared exemplars run once (``greedy_generate``'s shared-prefix path):
the same continuations as the plain path and as one prompt at a time, for model families with
rotary and absolute positions, through a LoRA adapter, and never where a sliding window would see
the padding."""

import pytest
import torch

from lightning_al.evaluation.sets import GenerativeEvaluation
from lightning_al.model import inference
from lightning_al.model.inference import greedy_generate, shared_prefix_length
from tests.test_evaluation import _left_padded
from tests.test_model_families import FAMILIES
from tests.test_scoring import EXTRA_STOP_TOKEN, make_model, one_thread  # noqa: F401  (fixture)

# A few-shot prompt: long shared exemplars, then questions of different lengths.
EXEMPLARS = "Q: two and two? A: four. So the answer is 4.\n\nQ: one and three? A: four. So the answer is 4.\n\n"
QUESTIONS = ["Q: one and one? A:", "Q: three and three and three? A:", "Q: ten? A:", "Q: two and five and one? A:"]
NEW_TOKENS = 12


def test_shared_prefix_length_of_a_left_padded_batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 1]])
    mask = (ids != 0).long()
    assert shared_prefix_length(ids, mask) == 3  # 5 6 7 in every row's content
    # Identical rows keep one token of their own: generation needs one uncached token.
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(same, torch.ones_like(same)) == 2
    assert shared_prefix_length(same[:1], torch.ones_like(same[:1])) == 0  # one row: nothing to share


def _generations(model, tokenizer, prompts, monkeypatch, share: bool):
    calls = []
    real = inference._prefix_cache

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(inference, "_prefix_cache", spy)
    monkeypatch.setattr(inference, "MIN_SHARED_PREFIX", 16 if share else 10**9)
    batch = _left_padded(tokenizer, prompts)
    stop = [tokenizer.eos_token_id, EXTRA_STOP_TOKEN]
    texts = greedy_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], NEW_TOKENS, stop)
    return texts, len(calls)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "phi3", "gemma2"])
def test_shared_prefix_generation_equals_the_plain_path(family, monkeypatch):
    # The LoRALanguageModel's PEFT-wrapped model, with random adapter weights: the prefix pass must go through them.
    module = make_model("prompt", config=FAMILIES[family])
    model, tokenizer = module.model.eval(), module.tokenizer
    prompts = [EXEMPLARS + q for q in QUESTIONS]
    shared, calls = _generations(model, tokenizer, prompts, monkeypatch, share=True)
    plain, _ = _generations(model, tokenizer, prompts, monkeypatch, share=False)
    # Gemma 2's sliding window (64 columns) is shorter than the batch: the plain path runs.
    assert calls == (0 if family == "gemma2" else 1)
    assert shared == plain
    if family != "gemma2":  # (this tiny Gemma 2 says the same to every question)
        assert len(set(shared)) > 1  # the questions lead somewhere different: a row mix-up would show
    for prompt, text in zip(prompts, shared):
        alone, _ = _generations(model, tokenizer, [prompt], monkeypatch, share=True)
        assert alone == [text]


class _FewShot(GenerativeEvaluation):
    """Two tasks with their own exemplars, as BBH's: batches come task by task."""

    batch_by_group = True

    def prepare(self, tokenizer, held_out):
        shots = [EXEMPLARS, EXEMPLARS.replace("four", "vier").replace("Q:", "F:")]
        self.rows = [{"input_ids": tokenizer(shots[g] + q)["input_ids"], "group": g, "id": f"{g}/{i}"}
                     for g in (0, 1) for i, q in enumerate(QUESTIONS[: 3 + g])]
        self._finish_prepare(["a", "b"])

    def prediction(self, generated, row):
        return generated

    def target(self, row):
        return ""


def test_a_few_shot_set_generates_each_task_apart_with_its_prefix_run_once(monkeypatch):
    module = make_model("prompt")
    module.model.eval()
    evaluation = _FewShot("fewshot", max_new_tokens=NEW_TOKENS)
    evaluation.prepare(module.tokenizer, None)
    calls = []
    real = inference._prefix_cache
    monkeypatch.setattr(inference, "_prefix_cache", lambda *args: calls.append(args[1].shape[1]) or real(*args))
    monkeypatch.setattr(inference, "MIN_SHARED_PREFIX", 16)
    loader = evaluation.dataloader(4, 0, module.tokenizer.pad_token_id)
    batches = list(loader)
    assert [[evaluation.rows[i]["group"] for i in b["index"].tolist()] for b in batches] == [[0, 0, 0, 1], [1, 1, 1]]
    with torch.no_grad():
        for batch in batches:
            evaluation.update(module, batch)
    evaluation.compute()
    # The first batch's two tasks ran apart: task a's 3 rows shared its exemplars; task b's lone row had none to share.
    assert len(calls) == 2 and all(length >= len(EXEMPLARS) for length in calls)
    stop = module.stop_token_ids
    for record in evaluation.last_records:
        row = evaluation.rows[[r["id"] for r in evaluation.rows].index(record["id"])]
        ids = torch.tensor([row["input_ids"]])
        alone = greedy_generate(module.model, module.tokenizer, ids, torch.ones_like(ids), NEW_TOKENS, stop)
        assert record["generation"] == alone[0]


def test_a_few_shot_set_in_token_budget_batches_keeps_tasks_apart_and_generates_the_same():
    module = make_model("prompt")
    module.model.eval()
    pad = module.tokenizer.pad_token_id
    generations = {}
    for batch_tokens in (None, 2 * (len(EXEMPLARS) + 40)):  # budgeted: about two rows a batch
        evaluation = _FewShot("fewshot", max_new_tokens=NEW_TOKENS)
        evaluation.prepare(module.tokenizer, None)
        batches = list(evaluation.dataloader(4, 0, pad, batch_tokens))
        if batch_tokens:
            assert len(batches) > 2 and all(len({evaluation.rows[i]["group"] for i in b["index"].tolist()}) == 1
                                            for b in batches)
        with torch.no_grad():
            for batch in batches:
                evaluation.update(module, batch)
        evaluation.compute()
        generations[batch_tokens] = {r["id"]: r["generation"] for r in evaluation.last_records}
    assert len(generations[None]) == 7 and generations[None] == generations[2 * (len(EXEMPLARS) + 40)]
