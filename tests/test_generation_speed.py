"""Greedy generation's KV cache (issue #15): a static cache by default (``model.generation_cache``), the
dynamic one as the fallback and on request; both give the same scores and generations, for scoring and
for the evaluation sets, with and without a shared few-shot prefix. (The static path's scores against the
one-example float64 reference: tests/test_scoring.py and tests/test_model_families.py, which run with
the default.)"""

import numpy as np
import pytest
import torch

from lightning_al.model import inference
from lightning_al.model.inference import generation_cache, greedy_generate, set_generation_cache
from lightning_al.module import LoRALanguageModel
from lightning_al.scoring import SCORE_NAMES
from tests.test_evaluation import _left_padded
from tests.test_model_families import FAMILIES, SEEDS
from tests.test_scoring import (  # noqa: F401  (fixtures)
    EXTRA_STOP_TOKEN,
    MODEL_CONFIG,
    datamodule,
    make_model,
    mixed_indices,
    module_scores,
    one_thread,
)

EXEMPLARS = "Q: two and two? A: four. So the answer is 4.\n\nQ: one and three? A: four. So the answer is 4.\n\n"
QUESTIONS = ["Q: one and one? A:", "Q: three and three and three? A:", "Q: ten? A:", "Q: two and five and one? A:"]


@pytest.fixture
def static_caches(monkeypatch):
    """The lengths of the static caches that generation makes, in order."""
    made = []

    class Spy(inference.StaticCache):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["max_cache_len"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inference, "StaticCache", Spy)
    return made


def _with_cache(model: LoRALanguageModel, cache: str) -> LoRALanguageModel:
    model.hparams.generation_cache = cache
    set_generation_cache(model.model, cache)
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "phi3"])
def test_static_and_dynamic_caches_give_the_same_scores(family, datamodule, mixed_indices, static_caches):
    model = make_model("generated", config=FAMILIES[family], extra_stop=family != "gpt2",
                       init_seed=SEEDS.get(family, 3))
    assert model.hparams.generation_cache == "static" and generation_cache(model.model) == "static"
    static = module_scores(model, datamodule, mixed_indices)
    batches = len(static_caches)
    assert batches == 2  # one static cache per batch, each as long as the batch's generation
    dynamic = module_scores(_with_cache(model, "dynamic"), datamodule, mixed_indices)
    assert len(static_caches) == batches  # none with the dynamic cache
    # Two float32 paths: a few float32 steps apart (row-chunked prefill attends over each chunk's own width,
    # which rounds differently); both equal the float64 reference to ATOL (test_scoring, test_model_families).
    for name in SCORE_NAMES:
        np.testing.assert_allclose(static[name], dynamic[name], rtol=0, atol=2e-6, err_msg=f"{family}: {name}")
    if family == "llama":
        assert len(np.unique(static["num_tokens"])) >= 2  # rows that stop early and rows that do not


def test_the_static_cache_is_as_long_as_the_batch_s_generation(datamodule, mixed_indices, static_caches):
    model = make_model("generated")
    batches = list(datamodule.score_dataloader(mixed_indices))
    with torch.no_grad():
        for batch in batches:
            model.predict_step(batch)
    assert static_caches == [b["input_ids"].shape[1] + model.hparams.max_new_tokens for b in batches]


def test_compile_runs_as_static_off_cuda_with_rounded_lengths(datamodule, mixed_indices, static_caches):
    model = make_model("generated")
    static = module_scores(model, datamodule, mixed_indices)
    del static_caches[:]
    compiled = module_scores(_with_cache(model, "compile"), datamodule, mixed_indices)
    assert static_caches and all(length % inference.COMPILED_CACHE_MULTIPLE == 0 for length in static_caches)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(static[name], compiled[name], rtol=0, atol=2e-6, err_msg=name)


def test_a_model_without_static_cache_support_falls_back_to_dynamic(datamodule, mixed_indices, static_caches,
                                                                    monkeypatch):
    model = make_model("generated")
    static = module_scores(model, datamodule, mixed_indices)
    del static_caches[:]
    monkeypatch.setattr(type(model.model.get_base_model()), "_can_compile_fullgraph", False)
    assert generation_cache(model.model) == "dynamic"
    fallback = module_scores(model, datamodule, mixed_indices)
    assert static_caches == []
    for name in SCORE_NAMES:
        np.testing.assert_allclose(static[name], fallback[name], rtol=0, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("shared", [True, False])
def test_generations_are_the_same_with_either_cache(family, shared, static_caches, monkeypatch):
    """The evaluation sets' generation, with the few-shot prefix run once into the static cache (or not)."""
    module = make_model("prompt", config=FAMILIES[family])
    model, tokenizer = module.model.eval(), module.tokenizer
    prefixes = []
    real = inference._prefix_cache
    monkeypatch.setattr(inference, "_prefix_cache", lambda *args: prefixes.append(1) or real(*args))
    monkeypatch.setattr(inference, "MIN_SHARED_PREFIX", 16 if shared else 10**9)
    batch = _left_padded(tokenizer, [EXEMPLARS + q for q in QUESTIONS])
    stop = [tokenizer.eos_token_id, EXTRA_STOP_TOKEN]
    texts = {cache: greedy_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], 12, stop,
                                    cache=cache) for cache in ("static", "dynamic")}
    assert len(static_caches) == 1 and len(prefixes) == (2 if shared else 0)
    assert texts["static"] == texts["dynamic"]
    assert len(set(texts["static"])) > 1


def test_the_module_s_cache_reaches_the_evaluation_sets(static_caches):
    module = make_model("prompt")
    tokenizer = module.tokenizer
    batch = _left_padded(tokenizer, QUESTIONS)
    stop = [tokenizer.eos_token_id]
    default = greedy_generate(module.model, tokenizer, batch["input_ids"], batch["attention_mask"], 6, stop)
    assert len(static_caches) == 1
    dynamic = LoRALanguageModel(config=MODEL_CONFIG, tokenizer="char", init_seed=3, generation_cache="dynamic")
    dynamic.configure_model()
    assert generation_cache(dynamic.model) == "dynamic"
    greedy_generate(dynamic.model, tokenizer, batch["input_ids"], batch["attention_mask"], 6, stop)
    assert len(static_caches) == 1
    assert default  # (texts checked equal across caches above)


def test_an_unknown_generation_cache_is_refused():
    with pytest.raises(ValueError, match="model.generation_cache: one of static, dynamic, compile"):
        LoRALanguageModel(config=MODEL_CONFIG, tokenizer="char", generation_cache="paged")
