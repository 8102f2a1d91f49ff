"""Tokenizer and base-model loading: hub ids, local folders, and an offline built-in tokenizer."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Literal

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


class PretrainedNotFoundError(FileNotFoundError):
    """A model or tokenizer is neither a local folder nor a hub repository that can be reached."""


#: Files whose presence marks a folder (or a cached hub repository) as a model / a tokenizer.
_MARKERS = {
    "model": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json"),
}


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE=1``, as on air-gapped nodes)."""
    from huggingface_hub import constants

    # The environment too: huggingface_hub reads it once, at import.
    flags = (os.environ.get(name, "").strip().upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def check_pretrained(name: str, key: str, kind: Literal["model", "tokenizer"] = "model") -> None:
    """Fail fast, naming ``key`` and the path or id, unless ``name`` can be loaded as a ``kind``.

    transformers reports a missing folder as a hub download failure ("Check your internet
    connection ...") without the path, and online only after retrying for about a minute; this
    check answers at once. ``name`` is a local folder when one exists under that path; otherwise
    it must be a hub id: offline (``HF_HUB_OFFLINE=1``) it must be in the local hub cache, online
    one request (no retries) asks the hub whether the repository exists.

    Raises:
        PretrainedNotFoundError: with the key, the path tried and what to do about it.
    """
    if name == CHAR_TOKENIZER and kind == "tokenizer":
        return
    path = Path(name).expanduser()
    markers = _MARKERS[kind]
    if path.is_dir():
        if not any((path / marker).is_file() for marker in markers):
            raise PretrainedNotFoundError(
                f"{key}: the folder {path.resolve()} holds no {kind} ({' or '.join(markers)} missing); "
                f"is it the folder that `save_pretrained` wrote?"
            )
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    where = f"{path.resolve()} does not exist"
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise PretrainedNotFoundError(f"{key}: {where} (and {name!r} is not a hub id)") from None
    from huggingface_hub import try_to_load_from_cache

    cached = any(isinstance(try_to_load_from_cache(name, marker), str) for marker in markers)
    if hub_offline():
        if not cached:
            raise PretrainedNotFoundError(
                f"{key}: {name!r} is neither a local folder ({where}) nor a hub {kind} in the local cache "
                f"(HF_HUB_OFFLINE=1: no download). Download it once where the hub is reachable "
                f"(`hf download {name}`, same HF_HOME) or point {key} to a local folder."
            )
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=15)
    except GatedRepoError:
        return  # exists; from_pretrained explains access with its own message
    except RepositoryNotFoundError:
        raise PretrainedNotFoundError(
            f"{key}: {name!r} is neither a local folder ({where}) nor a repository on the hub "
            f"(private ones need `hf auth login`)"
        ) from None
    except Exception as err:  # noqa: BLE001 - network errors come in many types; all mean "unreachable"
        if cached:
            return  # transformers falls back to the cached copy
        raise PretrainedNotFoundError(
            f"{key}: {name!r} is not a local folder ({where}) and the hub could not be reached to resolve it "
            f"({type(err).__name__}). On a machine without network set HF_HUB_OFFLINE=1 to load from the cache, "
            f"or point {key} to a local folder."
        ) from None


def load_tokenizer(name_or_path: str, key: str = "model.tokenizer") -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub id or local folder (or the built-in ``"char"`` one).

    A tokenizer without a pad token gets its EOS token as pad: padding is masked out everywhere, so
    the choice only has to be a valid id.
    """
    if name_or_path == CHAR_TOKENIZER:
        tokenizer = build_char_tokenizer()
    else:
        check_pretrained(name_or_path, key, "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
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
        check_pretrained(pretrained, "model.pretrained", "model")
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
