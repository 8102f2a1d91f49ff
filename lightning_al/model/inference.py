"""Inference over left-padded prompts: decoder hidden states with the right positions, greedy,
batched, bounded generation with the model's own sampling settings switched off, and the pass that
runs a module over a loader on every process and gathers each example's outputs once."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.strategies import Strategy

Batch = dict[str, torch.Tensor]


def decoder_hidden_states(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the decoder (no LM head) for a left-padded batch."""
    decoder = model.get_decoder()
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if "position_ids" in inspect.signature(decoder.forward).parameters:
        # Left padding: each prompt's positions start at 0 at its first real token, as in generate().
        # Without them, models with absolute position embeddings (GPT-2, OPT, ...) see every prompt
        # shifted by its padding, and results would depend on the batch the prompt falls in.
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return decoder(**inputs).last_hidden_state


def content_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch, width] bool: the columns of a left-padded batch that hold each prompt's content tokens
    (``content_start`` <= token < ``content_end``; chat-template tokens and padding excluded)."""
    mask = batch["attention_mask"]
    width = mask.shape[1]
    offset = width - mask.sum(1, keepdim=True)
    token = torch.arange(width, device=mask.device).unsqueeze(0) - offset
    return (token >= batch["content_start"].unsqueeze(1)) & (token < batch["content_end"].unsqueeze(1))


def prompt_embeddings(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A prompt's embedding (BRIEF §2): the mean of the decoder's last hidden states [batch, width, H]
    over its content tokens, L2-normalised, in float32. Template tokens are the same in every prompt
    and would only pull every pair together; a prompt without content tokens is averaged whole."""
    inside = content_mask(batch)
    empty = ~inside.any(1, keepdim=True)
    inside = (inside | (empty & batch["attention_mask"].bool())).unsqueeze(-1).to(torch.float32)
    mean = (hidden.float() * inside).sum(1) / inside.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(mean, dim=-1)


#: Where ``captured_prefill`` leaves its record on the model while it is active (read by the row-chunked prefill).
_CAPTURE_ATTRIBUTE = "lightning_al_captured_prefill"


@contextmanager
def captured_prefill(model: PreTrainedModel) -> Iterator[dict[str, torch.Tensor]]:
    """While generating: the decoder's last hidden states of the prompt pass (its first call), under
    ``"hidden"``, with no extra forward and without transformers keeping every layer's states.

    When ``generate_greedy`` pre-fills a batch in chunks of rows (``PREFILL_ROWS``), the chunks' passes
    are not taken for the first call: their hidden states, put together at the batch's columns, are
    joined to those of generate's own first call (the last column), so that ``"hidden"`` is the same
    [batch, width, H] either way."""
    seen: dict[str, Any] = {}

    def keep_first(module, args, output) -> None:
        if "hidden" in seen or seen.get("chunking"):
            return
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if "before" in seen:  # the columns pre-filled in chunks of rows
            hidden = torch.cat([seen.pop("before"), hidden], 1)
        seen["hidden"] = hidden

    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    handle = owner.get_decoder().register_forward_hook(keep_first)
    outer = getattr(owner, _CAPTURE_ATTRIBUTE, None)
    setattr(owner, _CAPTURE_ATTRIBUTE, seen)
    try:
        yield seen
    finally:
        handle.remove()
        setattr(owner, _CAPTURE_ATTRIBUTE, outer)


@contextmanager
def clean_generation_config(model: PreTrainedModel, stop_ids: list[int], pad_token_id: int) -> Iterator[None]:
    """Swap the model's generation config for a bare one while generating.

    A model's own config may carry repetition penalties, n-gram bans, suppressed tokens or a
    minimum length, which change the distributions (and -inf logits make an entropy NaN).
    transformers fills every field the passed config leaves unset from the model's config, so the
    model's is replaced during the call rather than overridden field by field.
    """
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own_config = owner.generation_config
    owner.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=pad_token_id)
    try:
        yield
    finally:
        owner.generation_config = own_config


#: Rows of a batch that share at least this many leading tokens (few-shot exemplars) have them run once.
MIN_SHARED_PREFIX = 64


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading content tokens every row of a left-padded batch has in common, leaving each
    row at least one token of its own (the first generation step needs one)."""
    lengths = attention_mask.sum(1)
    shortest = int(lengths.min())
    if input_ids.shape[0] < 2 or shortest < 2:
        return 0
    width = input_ids.shape[1]
    # Content right-aligned by left padding: row i's token t sits at column width - length_i + t.
    columns = width - lengths.unsqueeze(1) + torch.arange(shortest - 1, device=input_ids.device).unsqueeze(0)
    content = input_ids.gather(1, columns)
    differs = (content != content[:1]).any(0)
    return int(differs.nonzero()[0]) if differs.any() else shortest - 1


def _middle_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows as ``[shared prefix][padding][own tokens]``: the prefix at the same columns in
    every row, so that one pass over it serves the whole batch. Positions come from the mask, so
    every token keeps its position."""
    lengths = attention_mask.sum(1)
    width = input_ids.shape[1]
    ids = input_ids.clone()
    mask = attention_mask.clone()
    for row, length in enumerate(lengths.tolist()):
        start = width - length
        ids[row, :prefix] = input_ids[row, start:start + prefix]
        mask[row, :prefix] = 1
        mask[row, prefix:start + prefix] = 0
    return ids, mask


def _can_share_prefix(model: PreTrainedModel, width: int) -> bool:
    """Whether middle padding leaves the model's attention unchanged: not with a sliding window
    shorter than the batch (the window counts columns, and the padding would take some of it)."""
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = owner.config
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    return not window or window >= width


def _prefix_cache(model: PreTrainedModel, prefix_ids: torch.Tensor):
    """A KV cache of ``prefix_ids`` [1, P] (the model's own, dynamic), or None when it cannot be copied to
    the batch's rows (then the plain path runs, over the middle-padded rows: the same results)."""
    owner = _owner(model)
    kwargs = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(owner.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the prefix's logits are never read
    with torch.no_grad():  # not inference tensors: generate() appends to this cache outside inference mode
        output = model(input_ids=prefix_ids, **kwargs)
    cache = output["cache"] if "cache" in output else output.past_key_values  # transformers 5: `cache`
    return cache if hasattr(cache, "batch_repeat_interleave") else None


#: KV cache of greedy generation (``LoRALanguageModel(generation_cache=...)``; see ``generate_greedy``).
GenerationCache = Literal["static", "dynamic", "compile"]
GENERATION_CACHES: tuple[str, ...] = ("static", "dynamic", "compile")
#: ``compile``: static caches are sized in multiples of this many tokens, so that batches of nearby widths
#: share one compiled decoding step.
COMPILED_CACHE_MULTIPLE = 256
_CACHE_ATTRIBUTE = "lightning_al_generation_cache"


def _owner(model: PreTrainedModel) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def set_generation_cache(model: PreTrainedModel, cache: GenerationCache) -> None:
    """Make ``cache`` the KV cache of every greedy generation with ``model`` that does not name one:
    generated-mode scoring and the generative evaluation sets (``LoRALanguageModel`` sets its
    ``generation_cache`` here)."""
    if cache not in GENERATION_CACHES:
        raise ValueError(f"generation cache: one of {', '.join(GENERATION_CACHES)}; got {cache!r}")
    setattr(_owner(model), _CACHE_ATTRIBUTE, cache)


def supports_static_cache(model: PreTrainedModel) -> bool:
    """Whether transformers can run this model's generation with a ``StaticCache``: decoder-only classes
    that declare it (``_can_compile_fullgraph``, which transformers sets for the classes whose attention
    works with a preallocated cache) and take the standard ``Cache`` objects."""
    owner = _owner(model)
    declared = getattr(owner, "_can_compile_fullgraph", False) or getattr(owner, "_supports_static_cache", False)
    standard = getattr(owner, "_supports_default_dynamic_cache", lambda: True)()
    return bool(declared) and standard and not owner.config.is_encoder_decoder


def generation_cache(model: PreTrainedModel, cache: GenerationCache | None = None) -> GenerationCache:
    """The KV cache greedy generation with ``model`` uses: ``cache``, else the one set with
    ``set_generation_cache``, else ``static``; ``dynamic`` where the model cannot use a static one."""
    choice = cache or getattr(_owner(model), _CACHE_ATTRIBUTE, "static")
    if choice not in GENERATION_CACHES:
        raise ValueError(f"generation cache: one of {', '.join(GENERATION_CACHES)}; got {choice!r}")
    return choice if choice == "dynamic" or supports_static_cache(model) else "dynamic"


def _cache_keyword(model: PreTrainedModel) -> str:
    # transformers 5 renamed generate's `past_key_values` to `cache`.
    parameters = inspect.signature(_owner(model).prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _static_cache(model: PreTrainedModel, length: int, prefix, rows: int) -> StaticCache | None:
    """A static cache of ``length`` positions, holding ``prefix`` (a dynamic cache of one row, or None)
    copied to ``rows`` rows; None when the prefix cache's layers cannot be copied into it."""
    owner = _owner(model)
    parameters = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": owner.config, "max_cache_len": length}
    # transformers 4 sized the cache's batch up front, on a device and in a dtype.
    kwargs.update({name: rows for name in ("max_batch_size", "batch_size") if name in parameters})
    kwargs.update({name: getattr(owner, name) for name in ("device", "dtype") if name in parameters})
    cache = StaticCache(**kwargs)
    if prefix is None:
        return cache
    layers = getattr(prefix, "layers", None)
    if not layers or len(layers) != len(getattr(cache, "layers", ())) or not all(
            isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers):
        return None
    with torch.no_grad():
        for index, layer in enumerate(layers):
            cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
    return cache


#: Greedy generation of a batch of more rows than this pre-fills its prompts (all but their last column) in
#: chunks of this many rows, each chunk as wide as its own longest prompt, into the batch's KV cache; generate
#: then runs the last column and decodes with every row. On a CPU a prefill token costs more in a batch of
#: many rows (2.9 ms at 8 rows, 4.0 at 64, SmolLM2-135M) and a wide batch carries more left padding, while
#: a decoding step costs less per row the more rows share it.
PREFILL_ROWS = 8
#: Rotary scalings whose frequencies depend on the longest position of a forward pass: a chunk of rows
#: would not see the positions of the whole batch, so such models are pre-filled whole.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_types(config) -> set[str]:
    found: set[str] = set()
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        for entry in [value, *(value.values() if isinstance(value, dict) else ())]:
            if isinstance(entry, dict):
                found.update(str(entry[key]) for key in ("rope_type", "type") if entry.get(key) is not None)
    return found


def _decoder_cache_keyword(model: PreTrainedModel) -> str | None:
    """The decoder's keyword for a KV cache, when its forward takes one and position ids (None otherwise)."""
    owner = _owner(model)
    decoder = owner.get_decoder()
    parameters = inspect.signature(decoder.forward).parameters
    # generate() passes positions computed from the mask only to a model whose forward takes them.
    if "position_ids" not in parameters or "position_ids" not in inspect.signature(owner.forward).parameters:
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _can_prefill_in_row_chunks(model: PreTrainedModel, length: int) -> bool:
    """Whether a chunk of rows, cut to its own width, gives each token the keys and values of the whole
    batch's pass: positions from the mask, no sliding window shorter than the generation (it counts
    columns; sliding-window cache layers are refused too, in ``_prefill_in_row_chunks``), no rotary
    scaling that depends on the pass's longest position, and a decoder that takes a cache and position ids."""
    config = _owner(model).config
    return (not getattr(config, "is_encoder_decoder", False) and _can_share_prefix(model, length)
            and not _rope_types(config) & set(_LENGTH_DEPENDENT_ROPE)
            and _decoder_cache_keyword(model) is not None)


def _plain_layers(cache, kind: type) -> bool:
    """Whether every layer of ``cache`` is exactly ``kind`` (no sliding-window or other special layers)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is kind for layer in layers)


def _prefill_in_row_chunks(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           cache) -> bool:
    """Fill ``cache`` (new and empty: a ``DynamicCache`` or a ``StaticCache`` of the batch's rows, every layer
    a plain one) with the keys and values of all but the last column of a left-padded batch, computed
    ``PREFILL_ROWS`` rows at a time (rows in order of length), each chunk without the columns that are
    padding in all of its rows. Positions come from the mask as in generate(): every token keeps its
    position, so its keys and values are those of a pass over the whole batch. They are written at the
    batch's own columns; a chunk's dropped columns hold zeros, masked as padding. Returns False, with the
    cache left empty, where the decoder's cache is not of plain layers of the expected shapes (then the
    plain path runs).

    Under ``captured_prefill`` the chunks' last hidden states are put together at the batch's columns
    for it (their passes do not count as generate's first call)."""
    owner = _owner(model)
    decoder = owner.get_decoder()
    keyword = _decoder_cache_keyword(model)
    rows, width = input_ids.shape
    kind = DynamicLayer if isinstance(cache, DynamicCache) else StaticLayer
    if keyword is None or width < 2 or not _plain_layers(cache, kind):
        return False
    capture = getattr(owner, _CAPTURE_ATTRIBUTE, None)
    prefill = attention_mask[:, :-1]
    order = torch.argsort(prefill.sum(1), stable=True)
    hidden = None
    written = False

    def give_up() -> bool:
        cache.reset()
        if capture is not None:
            capture.pop("before", None)
        return False

    if capture is not None:
        capture["chunking"] = True
    try:
        with torch.no_grad():  # not inference tensors: generate() writes to this cache outside inference mode
            for start in range(0, rows, PREFILL_ROWS):
                chunk = order[start:start + PREFILL_ROWS]
                mask = prefill[chunk]
                used = mask.bool().any(0)
                if not used.any():
                    continue  # one-token prompts: nothing before their last column
                first = int(used.nonzero()[0])
                mask = mask[:, first:]
                positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
                own = DynamicCache(config=owner.config)
                output = decoder(input_ids=input_ids[chunk, first:-1], attention_mask=mask, position_ids=positions,
                                 use_cache=True, **{keyword: own})
                shape = (len(chunk), width - 1 - first)
                if not _plain_layers(own, DynamicLayer) or len(own.layers) != len(cache.layers) or any(
                        not isinstance(layer.keys, torch.Tensor) or not isinstance(layer.values, torch.Tensor)
                        or layer.keys.dim() != 4 or (layer.keys.shape[0], layer.keys.shape[2]) != shape
                        or (layer.values.shape[0], layer.values.shape[2]) != shape for layer in own.layers):
                    return give_up()
                for index, (layer, target) in enumerate(zip(own.layers, cache.layers)):
                    if not written:  # the batch's layer, all padding: then each chunk's columns in place
                        _, heads, _, k_dim = layer.keys.shape
                        cache.update(layer.keys.new_zeros(rows, heads, width - 1, k_dim),
                                     layer.values.new_zeros(rows, layer.values.shape[1], width - 1,
                                                            layer.values.shape[-1]), index)
                    target.keys[chunk, :, first:width - 1] = layer.keys
                    target.values[chunk, :, first:width - 1] = layer.values
                written = True
                if capture is not None:
                    states = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
                    if hidden is None:
                        hidden = states.new_zeros(rows, width - 1, states.shape[-1])
                    hidden[chunk, first:] = states
                del own, output
    finally:
        if capture is not None:
            capture.pop("chunking", None)
    if not written:
        return False
    if capture is not None and hidden is not None:
        capture["before"] = hidden
    return True


def generate_greedy(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    cache: GenerationCache | None = None,
    share_prefix: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """``model.generate`` of a left-padded batch with ``config`` (greedy), with the KV cache ``cache``
    (default: ``generation_cache(model)``); returns the sequences (the prompt columns first, as given).

    ``static`` preallocates the keys and values of the batch's whole generation (its width plus
    ``max_new_tokens``) and writes each step's in place. ``dynamic`` is transformers' default cache,
    which concatenates every layer's whole cache with the new step's keys and values at every step: a
    copy of the whole cache per step, which costs most with long prompts (few-shot; measured in
    benchmarks/results/generation-cpu.md, BBH rows). Attention over the unfilled
    positions of a static cache is masked, so both give the same continuations and scores (tested
    against a one-example float64 reference, eight model families). ``compile`` is ``static`` with
    transformers' ``torch.compile`` of the decoding step, on CUDA only (it needs CUDA graphs to pay off;
    elsewhere it runs as ``static``): its cache lengths are rounded up to ``COMPILED_CACHE_MULTIPLE``, and
    each new batch shape compiles anew, so it suits long passes of similar batches. On CUDA a static
    cache is otherwise never compiled (``disable_compile``), whatever transformers would choose.

    ``share_prefix``: rows that begin with the same ``MIN_SHARED_PREFIX`` tokens or more have that prefix
    run once and its keys and values copied to every row (see ``greedy_generate``).

    Otherwise a batch of more than ``PREFILL_ROWS`` rows has all but its last column pre-filled into the
    cache in chunks of that many rows, each as wide as its own longest prompt (``_prefill_in_row_chunks``);
    generate's own first step runs the last column, so the first generated token's logits still come from
    generate (its logits processors see every step). Models where a chunk could see other positions or
    windows (sliding windows, length-dependent rotary scaling), and caches with layers of another kind,
    are pre-filled whole, as before.
    """
    choice = generation_cache(model, cache)
    rows = input_ids.shape[0]
    prefix_cache = None
    if share_prefix:
        prefix = shared_prefix_length(input_ids, attention_mask)
        if prefix >= MIN_SHARED_PREFIX and _can_share_prefix(model, input_ids.shape[1] + config.max_new_tokens):
            input_ids, attention_mask = _middle_padded(input_ids, attention_mask, prefix)
            prefix_cache = _prefix_cache(model, input_ids[:1, :prefix])
    config = copy.deepcopy(config)
    extra: dict[str, Any] = {}
    length = input_ids.shape[1] + config.max_new_tokens
    # Many rows, no shared prefix: the prompts are pre-filled in chunks of rows, generate runs the last column.
    chunked = prefix_cache is None and rows > PREFILL_ROWS and _can_prefill_in_row_chunks(model, length)
    if choice == "dynamic":
        if prefix_cache is not None:
            prefix_cache.batch_repeat_interleave(rows)
            extra[_cache_keyword(model)] = prefix_cache
        elif chunked:
            filled = DynamicCache(config=_owner(model).config)
            if _prefill_in_row_chunks(model, input_ids, attention_mask, filled):
                extra[_cache_keyword(model)] = filled
    else:
        if choice == "compile":
            length = -(-length // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
        static = _static_cache(model, length, prefix_cache, rows)
        if static is None:  # a prefix cache of another kind: the dynamic path, with it
            prefix_cache.batch_repeat_interleave(rows)
            static = prefix_cache
        elif chunked:
            _prefill_in_row_chunks(model, input_ids, attention_mask, static)  # or left empty: the plain path
        extra[_cache_keyword(model)] = static
        config.disable_compile = choice != "compile"
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra, **kwargs)


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    stop_strings: Sequence[str] = (),
    cache: GenerationCache | None = None,
) -> list[str]:
    """Greedy continuations of a left-padded batch (KV cache), decoded without special tokens.

    Generation stops at an end-of-turn id, at ``max_new_tokens`` or once every row has produced one
    of ``stop_strings``; the text is returned untruncated (cut it with ``truncate_at_stop``), since a
    row that stopped may still have decoded a few tokens while the others went on.

    Rows that begin with the same ``MIN_SHARED_PREFIX`` tokens or more (the exemplars of a few-shot
    prompt) have that prefix run once, its keys and values copied to every row: on a CPU, prefill of
    the long shared exemplars is most of a few-shot evaluation's time. Same tokens, same positions,
    same masks: the continuations are those of the plain path (tested, several model families).
    ``cache``: the KV cache (``generate_greedy``; default: the model's ``generation_cache``).
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id, stop_strings=list(stop_strings) or None,
    )
    with clean_generation_config(model, stop_ids, tokenizer.pad_token_id):
        output = generate_greedy(model, input_ids, attention_mask, config, cache, share_prefix=True,
                                 tokenizer=tokenizer if stop_strings else None)
    new_tokens = output[:, input_ids.shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


@torch.inference_mode()
def run_and_gather(
    trainer: Trainer,
    pl_module: LightningModule,
    batches: Iterable[Batch],
    step: Callable[[Batch], Batch],
    outputs: dict[str, list[torch.Tensor]] | None = None,
    after_batch: Callable[[dict[str, list[torch.Tensor]]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``step`` over this process's ``batches`` with the module unwrapped (no DDP forward), in
    eval mode under the precision plugin's context, then gather every process's outputs with
    ``gather_examples``: each example once, sorted by its ``"index"``.

    ``step`` returns, for a batch already on the device, one row per example under each key of
    ``outputs`` (``"index"`` among them); the rows are kept on the CPU. ``outputs`` may hold the rows
    of an earlier, interrupted pass, to continue it. ``after_batch`` sees the rows so far after every
    batch (to save them, or to raise and stop). The module's training mode comes back however the
    pass ends. A collective: every process calls it, each with the same number of rows in the end.
    """
    outputs = {"index": []} if outputs is None else outputs
    was_training = pl_module.training
    pl_module.eval()
    try:
        with trainer.precision_plugin.predict_step_context():
            for batch in batches:
                result = step(trainer.strategy.batch_to_device(batch))
                for key, rows in outputs.items():
                    rows.append(result[key].cpu())
                if after_batch is not None:
                    after_batch(outputs)
    finally:
        pl_module.train(was_training)
    return gather_examples(trainer.strategy, {k: torch.cat(v) if v else torch.empty(0) for k, v in outputs.items()})


def gather_examples(strategy: Strategy, rows: Batch) -> dict[str, np.ndarray]:
    """Every process's ``rows`` (one per example, keyed by ``rows["index"]``), each example once and
    sorted by index, as numpy arrays.

    DDP's distributed sampler (and ``score_pool``'s shards) pad the last batches with repeated
    examples so that every process has as many rows; a repeat is dropped, keeping the first
    occurrence in process order, as ``ExampleRecords.gather`` does. Processes may also hold different
    numbers of rows (the predict loop's unrepeated shards). A collective: every process must call it.
    """
    # On the strategy's device: all_gather may need the accelerator's tensors (NCCL).
    device = strategy.root_device
    # all_gather needs one shape on every rank, but Lightning's predict loop shards without repeats
    # (UnrepeatedDistributedSampler): ranks may hold different numbers of rows. Pad to the largest with
    # index -1, dropped below.
    most = int(strategy.all_gather(torch.tensor([len(rows["index"])], device=device)).max())
    gathered = {}
    for key, value in rows.items():
        fill = value.new_full((most - len(value), *value.shape[1:]), -1 if key == "index" else 0)
        padded = torch.cat([value, fill]).to(device)
        gathered[key] = strategy.all_gather(padded).reshape(-1, *value.shape[1:]).cpu().numpy()
    real = gathered["index"] >= 0
    gathered = {key: value[real] for key, value in gathered.items()}
    _, first = np.unique(gathered["index"], return_index=True)  # sorted by index; the first of a repeat
    return {key: value[first] for key, value in gathered.items()}
