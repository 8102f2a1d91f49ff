"""Exact scores for every model family (issue #14).

Scoring and log-likelihood evaluation run the LM head themselves; these tests check, for tiny random
models of eight families, that every score of every source and every multiple-choice log-likelihood
equals a float64, one-example-at-a-time reference computed from the model's *own forward logits*
— which include Gemma 2's soft-capping, Cohere's logit scale and Granite's logit scaling. A model
whose head the probe cannot reproduce is refused, never scored approximately.
"""

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_al.evaluation.likelihood import choice_logprobs
from lightning_al.model import head as head_module
from lightning_al.model.head import UnsupportedHeadError, output_head
from lightning_al.model.loading import load_causal_lm, load_tokenizer
from lightning_al.module import LoRALanguageModel
from lightning_al.scoring import SCORE_NAMES
from tests.test_evaluation import _left_padded, _naive_logprob
from tests.test_scoring import (  # noqa: F401  (fixtures)
    ATOL,
    GPT2_CONFIG,
    MODEL_CONFIG,
    datamodule,
    make_model,
    mixed_indices,
    module_scores,
    one_thread,
    reference_scores,
)

_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.3}
FAMILIES = {
    "llama": MODEL_CONFIG,
    # The cap is small enough that it changes almost every logit of this model (checked below).
    "gemma2": dict(_DECODER, model_type="gemma2", head_dim=8, final_logit_softcapping=2.0,
                   attn_logit_softcapping=50.0, sliding_window=64, query_pre_attn_scalar=8),
    "qwen2": dict(_DECODER, model_type="qwen2"),
    "mistral": dict(_DECODER, model_type="mistral", sliding_window=None),
    "phi3": dict(_DECODER, model_type="phi3"),
    "gpt2": GPT2_CONFIG,
    "cohere": dict(_DECODER, model_type="cohere", logit_scale=0.5),
    "granite": dict(_DECODER, model_type="granite", logits_scaling=0.5),
}
#: Seeds whose random models have no near tie (< 1e-4) in any greedy step of the generated source,
#: where float32 and the float64 reference could legitimately choose different tokens.
SEEDS = {"gpt2": 5, "qwen2": 4}
#: The post-processing the probe must find in each family's forward: (scale, softcap).
EXPECTED_HEAD = {"gemma2": (1.0, 2.0), "cohere": (0.5, None), "granite": (2.0, None)}


@pytest.mark.parametrize("source", ["prompt", "first", "generated"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scores_equal_the_models_own_logits(family, source, datamodule, mixed_indices):
    model = make_model(source, config=FAMILIES[family], extra_stop=family != "gpt2", init_seed=SEEDS.get(family, 3))
    ours = module_scores(model, datamodule, mixed_indices)
    expected = reference_scores(model, datamodule, mixed_indices, source)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=ATOL, err_msg=f"{family} {source}: {name}")
    assert np.ptp(ours["entropy"]) > 1e-3, "distributions that differ between examples"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_probe_finds_each_familys_post_processing(family):
    model = make_model("prompt", config=FAMILIES[family])
    head = output_head(model.model)
    assert (head.scale, head.softcap) == EXPECTED_HEAD.get(family, (1.0, None))
    if family == "gemma2":
        # The cap matters for this model: without it the logits (and every score) would differ.
        base = model.model.get_base_model()
        x = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            raw = base.get_output_embeddings()(base.get_decoder()(input_ids=x).last_hidden_state)
        assert (raw - head.postprocess(raw)).abs().max() > 1.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_choice_logprobs_equal_the_models_own(family):
    tokenizer = load_tokenizer("char")
    model = load_causal_lm(None, FAMILIES[family], tokenizer, init_seed=3).eval()
    reference = copy.deepcopy(model).double()
    prompts = ["Q: 2+2?\nA. 3\nB. 4\nAnswer:", "Which?\nA. x\nB. y\nAnswer:", "Hi\nAnswer:"]
    batch = _left_padded(tokenizer, prompts)
    for continuations in ([" A", " B"], ["A", "B"]):  # multi-token and one-token paths
        tokens = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations] for _ in prompts]
        got = choice_logprobs(model, batch, tokens)
        for i, prompt in enumerate(prompts):
            expected = [_naive_logprob(reference, tokenizer(prompt)["input_ids"], t) for t in tokens[i]]
            torch.testing.assert_close(got[i].double(), torch.tensor(expected, dtype=torch.float64), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------ unknown heads are refused
class _SquashedLlama(LlamaForCausalLM):
    """A family whose forward post-processes its logits in a new way (neither scaling nor soft-cap)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = torch.sigmoid(out.logits) * 10.0
        return out


class _ScaledHiddenLlama(LlamaForCausalLM):
    """A family that rescales the decoder's output before its LM head (as MiniCPM does)."""

    def forward(self, *args, **kwargs):
        hook = self.lm_head.register_forward_pre_hook(lambda module, args: (args[0] * 0.5,))
        try:
            return super().forward(*args, **kwargs)
        finally:
            hook.remove()


def _tiny(cls):
    tokenizer = load_tokenizer("char")
    config = LlamaConfig(vocab_size=len(tokenizer), **{k: v for k, v in MODEL_CONFIG.items() if k != "model_type"})
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("cls, words", [(_SquashedLlama, "neither a scaling nor a soft-cap"),
                                        (_ScaledHiddenLlama, "changes the decoder's hidden states")])
def test_an_unknown_head_is_refused_with_the_model_class(cls, words, monkeypatch):
    with pytest.raises(UnsupportedHeadError, match=cls.__name__) as error:
        output_head(_tiny(cls))
    assert words in str(error.value) and "score_source=generated" in str(error.value)
    # Through the LightningModule: refused when the model is built, before any scoring pass; the
    # generated source, which reads the logits generate() returns, is allowed.
    monkeypatch.setattr("lightning_al.module.load_causal_lm", lambda *args, **kwargs: _tiny(cls))
    with pytest.raises(UnsupportedHeadError, match=cls.__name__):
        LoRALanguageModel(config={"model_type": "llama"}, tokenizer="char", score_source="prompt").configure_model()
    LoRALanguageModel(config={"model_type": "llama"}, tokenizer="char", score_source="generated").configure_model()


def test_the_probe_runs_once_per_model(monkeypatch):
    model = _tiny(LlamaForCausalLM)
    calls = []
    probe = head_module._probe
    monkeypatch.setattr(head_module, "_probe", lambda m: calls.append(m) or probe(m))
    for _ in range(3):
        output_head(model)
    assert len(calls) == 1


# ------------------------------------------------------------------------ embeddings of the scoring pass
@pytest.mark.parametrize("source", ["prompt", "generated"])
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_embeddings_equal_a_one_example_reference(family, source, datamodule, mixed_indices):
    """predict_step's embeddings: the mean of the model's own last hidden states over the prompt's
    content tokens, L2-normalised, one unpadded example at a time; float16 (3 significant digits)."""
    model = make_model(source, config=FAMILIES[family], extra_stop=False, init_seed=SEEDS.get(family, 3))
    got = {}
    with torch.no_grad():
        for batch in datamodule.score_dataloader(mixed_indices):
            out = model.predict_step(batch)
            assert out["embedding"].dtype == torch.float16
            got.update(zip(out["index"].tolist(), out["embedding"].float()))
        for i in np.sort(mixed_indices):
            ex = datamodule.pool[int(i)]
            ids = torch.tensor([ex["input_ids"][: ex["prompt_length"]]])
            hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
            mean = hidden[ex["content_start"]: ex["content_end"]].mean(0)
            expected = mean / mean.norm()
            torch.testing.assert_close(got[int(i)].double(), expected, atol=2e-3, rtol=0)
