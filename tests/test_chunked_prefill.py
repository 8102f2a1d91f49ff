"""Greedy generation with the prompts pre-filled in chunks of rows (``generate_greedy``, ``PREFILL_ROWS``):
the same continuations as the plain path and as one prompt at a time, for model families with rotary
and absolute positions, through a LoRA adapter, with static and dynamic caches; the same scores (against
the float64 one-example reference) and embeddings; and never where a chunk could see the batch otherwise
(sliding windows, length-dependent rotary scaling)."""

import numpy as np
import pytest
import torch

from lightning_al.model import inference
from lightning_al.model.inference import greedy_generate
from lightning_al.scoring import SCORE_NAMES
from tests.test_evaluation import _left_padded
from tests.test_model_families import FAMILIES, SEEDS
from tests.test_scoring import (  # noqa: F401  (fixtures)
    ATOL,
    EXTRA_STOP_TOKEN,
    datamodule,
    make_model,
    mixed_indices,
    one_thread,
    reference_scores,
)

# Mixed lengths (left padding), in no order of length, one of them a single token (nothing to pre-fill).
PROMPTS = ["Q: one and one? A:", "Q: three and three and three? A:", "Q: ten? A:", "x", "Q: two and five and one? A:",
           "hi", "Q: what is seven and eight and nine and ten? A:", "Q: 2? A:", "Q: four and one? A:",
           "Q: nine? A:", "Q: one and five and six? A:", "abc"]
NEW_TOKENS = 12
PLAIN = 10**9  # PREFILL_ROWS that no batch exceeds: the plain path


@pytest.fixture
def prefills(monkeypatch):
    """What each call of the row-chunked prefill returned (True: it filled the cache), and the shapes of
    the decoder's inputs [rows, columns], in order."""
    seen = {"filled": [], "shapes": []}
    real = inference._prefill_in_row_chunks

    def spy(*args):
        seen["filled"].append(real(*args))
        return seen["filled"][-1]

    monkeypatch.setattr(inference, "_prefill_in_row_chunks", spy)
    return seen


def _generate(model, tokenizer, prompts, cache, monkeypatch, rows, seen=None):
    monkeypatch.setattr(inference, "PREFILL_ROWS", rows)
    batch = _left_padded(tokenizer, prompts)
    stop = [tokenizer.eos_token_id, EXTRA_STOP_TOKEN]
    decoder = model.get_base_model().get_decoder()

    def shape(module, args, kwargs):
        if seen is not None:
            seen["shapes"].append(tuple((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape))

    hook = decoder.register_forward_pre_hook(shape, with_kwargs=True)
    try:
        return greedy_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], NEW_TOKENS, stop,
                               cache=cache)
    finally:
        hook.remove()


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "phi3"])
def test_chunked_prefill_generates_as_the_plain_path_and_one_prompt_at_a_time(family, cache, prefills, monkeypatch):
    # The LoRALanguageModel's PEFT-wrapped model, with random adapter weights: the chunks must go through them.
    module = make_model("prompt", config=FAMILIES[family], init_seed=SEEDS.get(family, 3))
    model, tokenizer = module.model.eval(), module.tokenizer
    chunked = _generate(model, tokenizer, PROMPTS, cache, monkeypatch, 4, prefills)
    assert prefills["filled"] == [True]
    width = _left_padded(tokenizer, PROMPTS)["input_ids"].shape[1]
    # Three chunks of 4 rows, each narrower than the batch (its own width), then generate's steps over all
    # rows, one column each: its first step is the prompts' last column, the rest came from the chunks.
    shapes = prefills["shapes"]
    assert [s[0] for s in shapes[:3]] == [4, 4, 4] and all(s[1] < width - 1 for s in shapes[:2])
    assert shapes[2][1] == width - 1  # the longest prompts' chunk: all but the last column
    assert shapes[3:] and all(s == (len(PROMPTS), 1) for s in shapes[3:])
    plain = _generate(model, tokenizer, PROMPTS, cache, monkeypatch, PLAIN)
    assert prefills["filled"] == [True]  # not called for the plain path
    assert chunked == plain
    assert len(set(chunked)) > len(PROMPTS) // 2  # the prompts lead somewhere different: a row mix-up would show
    for prompt, text in zip(PROMPTS, chunked):
        assert _generate(model, tokenizer, [prompt], cache, monkeypatch, PLAIN) == [text], prompt


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_chunks_of_one_token_prompts_and_uneven_chunks(cache, prefills, monkeypatch):
    """A chunk whose rows have nothing before their last column is skipped (its columns stay zero, masked);
    a batch of only such rows is not pre-filled at all."""
    module = make_model("prompt")
    model, tokenizer = module.model.eval(), module.tokenizer
    prompts = ["y", *PROMPTS[:5]]  # "x" and "y": the first chunk of 2 rows (rows in order of length)
    chunked = _generate(model, tokenizer, prompts, cache, monkeypatch, 2, prefills)
    assert prefills["filled"] == [True] and prefills["shapes"][0][0] == 2 and len(prefills["shapes"]) > 2
    assert chunked == _generate(model, tokenizer, prompts, cache, monkeypatch, PLAIN)
    assert len(set(chunked)) > 2
    ones = ["x", "y", "z"]
    assert _generate(model, tokenizer, ones, cache, monkeypatch, 1, prefills) == \
        _generate(model, tokenizer, ones, cache, monkeypatch, PLAIN)
    assert prefills["filled"] == [True, False]


def test_batches_of_few_rows_and_shared_prefixes_are_not_chunked(prefills, monkeypatch):
    module = make_model("prompt")
    model, tokenizer = module.model.eval(), module.tokenizer
    _generate(model, tokenizer, PROMPTS[:8], None, monkeypatch, 8)
    assert prefills["filled"] == []  # 8 rows: not more than PREFILL_ROWS
    monkeypatch.setattr(inference, "MIN_SHARED_PREFIX", 16)
    exemplars = "Q: two and two? A: four. So the answer is 4.\n\n"
    _generate(model, tokenizer, [exemplars + p for p in PROMPTS], None, monkeypatch, 4)
    assert prefills["filled"] == []  # the shared-prefix path


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_sliding_windows_and_length_dependent_rope_are_pre_filled_whole(cache, prefills, monkeypatch):
    # Gemma 2: sliding-window layers, with a window shorter than the batch's generation: not attempted.
    module = make_model("prompt", config=FAMILIES["gemma2"])
    model, tokenizer = module.model.eval(), module.tokenizer
    width = _left_padded(tokenizer, PROMPTS)["input_ids"].shape[1]
    assert FAMILIES["gemma2"]["sliding_window"] >= width + NEW_TOKENS
    monkeypatch.setattr(model.get_base_model().config, "sliding_window", 16)
    assert _generate(model, tokenizer, PROMPTS, cache, monkeypatch, 4) == \
        _generate(model, tokenizer, PROMPTS, cache, monkeypatch, PLAIN)
    assert prefills["filled"] == []
    # A window longer than the generation (64 columns) still makes sliding-window cache layers: refused there.
    monkeypatch.setattr(model.get_base_model().config, "sliding_window", FAMILIES["gemma2"]["sliding_window"])
    assert _generate(model, tokenizer, PROMPTS, cache, monkeypatch, 4) == \
        _generate(model, tokenizer, PROMPTS, cache, monkeypatch, PLAIN)
    assert prefills["filled"] == [False]
    # Rotary frequencies that depend on the longest position of the pass.
    llama = make_model("prompt").model
    config = llama.get_base_model().config
    assert inference._can_prefill_in_row_chunks(llama, 100)
    for rope in ("dynamic", "longrope"):
        monkeypatch.setattr(config, "rope_parameters", dict(config.rope_parameters, rope_type=rope, factor=2.0))
        assert not inference._can_prefill_in_row_chunks(llama, 100)


def _predictions(model, datamodule, indices):
    parts = []
    with torch.no_grad():
        for batch in datamodule.score_dataloader(indices):
            assert batch["input_ids"].shape[0] == 10  # more than the default PREFILL_ROWS
            parts.append(model.predict_step(batch))
    out = {k: torch.cat([p[k] for p in parts]).detach().double().numpy() for k in ("index", "embedding", *SCORE_NAMES)}
    order = np.argsort(out["index"])
    return {k: v[order] for k, v in out.items()}


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "phi3"])
def test_generated_scores_and_embeddings_are_unchanged(family, cache, datamodule, mixed_indices, prefills, monkeypatch):
    """Scoring batches of 10 rows (more than PREFILL_ROWS = 8): scores equal the float64 one-example reference
    and the plain path's; the embeddings (from the prompt pass, put together from the chunks) equal the plain
    path's."""
    model = make_model("generated", config=FAMILIES[family], extra_stop=family != "gpt2", init_seed=SEEDS.get(family, 3))
    model.hparams.generation_cache = cache
    inference.set_generation_cache(model.model, cache)
    assert inference.PREFILL_ROWS == 8
    chunked = _predictions(model, datamodule, mixed_indices)
    assert prefills["filled"] == [True, True]  # both batches
    monkeypatch.setattr(inference, "PREFILL_ROWS", PLAIN)
    plain = _predictions(model, datamodule, mixed_indices)
    assert prefills["filled"] == [True, True]
    expected = reference_scores(model, datamodule, mixed_indices, "generated")
    for name in SCORE_NAMES:
        np.testing.assert_allclose(chunked[name], expected[name], rtol=0, atol=ATOL, err_msg=f"{family}: {name}")
        # float32: a chunk's matmuls have other shapes than the whole batch's (a few ulps seen, 1.2e-6 at most).
        np.testing.assert_allclose(chunked[name], plain[name], rtol=0, atol=ATOL, err_msg=f"{family}: {name}")
    # float16 embeddings: a rounding step apart at most.
    np.testing.assert_allclose(chunked["embedding"], plain["embedding"], rtol=0, atol=2e-3, err_msg=family)
    assert np.abs(chunked["embedding"]).max() > 0.1 and np.isfinite(chunked["embedding"]).all()
    assert len(np.unique(chunked["num_tokens"])) >= 2
