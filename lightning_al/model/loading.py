"""Tokenizer and base-model loading: hub ids, local folders, and an offline built-in tokenizer."""

from __future__ import annotations

import string
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

#: Name of the built-in character-level tokenizer: it needs no download, so the demo and the tests
#: run on a fresh machine with no network.
CHAR_TOKENIZER = "char"

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = _CHATML
    return tokenizer


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub id or local folder (or the built-in ``"char"`` one).

    A tokenizer without a pad token gets its EOS token as pad: padding is masked out everywhere, so
    the choice only has to be a valid id.
    """
    tokenizer = build_char_tokenizer() if name_or_path == CHAR_TOKENIZER else AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    pretrained: str | None,
    config: dict[str, Any] | None,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype | None = None,
    init_seed: int = 0,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """A causal LM from pretrained weights, or randomly initialised from a config dict.

    The random initialisation uses its own seed (not the run's), so every run of a study, and a
    resumed run, starts from the same base weights without storing them in checkpoints.
    """
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if pretrained is not None:
        return AutoModelForCausalLM.from_pretrained(pretrained, dtype=dtype, **kwargs)
    if config is None:
        raise ValueError("model: set either `pretrained` (hub id or folder) or `config` (a random-init model config)")
    config = dict(config)
    model_type = config.pop("model_type", "llama")
    config.setdefault("vocab_size", len(tokenizer))
    config.setdefault("pad_token_id", tokenizer.pad_token_id)
    config.setdefault("eos_token_id", tokenizer.eos_token_id)
    config.setdefault("bos_token_id", tokenizer.bos_token_id)
    model_config = AutoConfig.for_model(model_type, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype, **kwargs)
    return model
