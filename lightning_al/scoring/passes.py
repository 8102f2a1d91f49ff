"""Forward passes that produce token statistics of a left-padded batch of prompts.

Only the prompt tokens are ever fed in: the reference response of an unlabeled example is its
annotation, and reading it before acquisition would leak labels.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from lightning_al.model.head import output_head
from lightning_al.model.inference import (
    GenerationCache,
    captured_prefill,
    clean_generation_config,
    decoder_hidden_states,
    generate_greedy,
    prompt_embeddings,
)
from lightning_al.scoring.statistics import chunked_token_statistics, token_statistics

ScoreSource = Literal["generated", "prompt", "first"]

#: Logits allowed at once however small the batch (1 MiB of float32): smaller blocks only add overhead.
_MIN_LOGITS_BUDGET = 1 << 18


def prompt_statistics(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], source: ScoreSource, chunk_size: int = 1024
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Teacher-forced statistics over the prompt's own content tokens (``prompt``) or only at the
    position right after the prompt (``first``). Returns token statistics, each token's row, and
    the prompts' embeddings (``prompt_embeddings``, from the same forward pass).

    The LM head runs only at scored positions, in chunks: full logits of a padded batch are never made.
    It is the model's exact head (``output_head``: soft-capping and logit scaling included).
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = decoder_hidden_states(model, input_ids, mask)
    width = input_ids.shape[1]
    if source == "first":
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        positions = torch.full_like(rows, width - 1)
        next_tokens = None
    else:
        # Left padding: token j of an example of length L sits at column width - L + j. The
        # distribution at column c predicts the token at c + 1, so target j is scored at c = ... + j - 1.
        offset = width - mask.sum(1)
        column = torch.arange(width, device=input_ids.device)
        target = column.unsqueeze(0) - offset.unsqueeze(1)
        start = batch["content_start"].clamp(min=1).unsqueeze(1)
        scored = (target >= start) & (target < batch["content_end"].unsqueeze(1))
        rows, target_columns = scored.nonzero(as_tuple=True)
        positions = target_columns - 1
        next_tokens = input_ids[rows, target_columns]
    # The LM head's working memory stays within the size of the decoder's own output (and the
    # decoder makes several tensors that large in every layer), so scoring adds no memory peak.
    budget = max(hidden.numel(), _MIN_LOGITS_BUDGET)
    head = output_head(model)
    stats = chunked_token_statistics(
        hidden[rows, positions], head.module, next_tokens, chunk_size, max_elements=budget,
        postprocess=None if head.is_identity else head.postprocess,
    )
    return stats, rows, prompt_embeddings(hidden, batch)


class _StepStatistics(LogitsProcessor):
    """Collects each generation step's statistics as generation proceeds, for rows still generating.

    Only a [batch, vocab] slice exists per step; no step's logits are kept. A row's end-of-turn step
    is included, the steps after it are not.
    """

    def __init__(self, batch_size: int, stop_ids: torch.Tensor) -> None:
        self.stop_ids = stop_ids
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=stop_ids.device)
        self.parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        active = (~self.done).nonzero(as_tuple=True)[0]
        rows = scores[active]  # a copy: the statistics may overwrite it
        self.done[active] |= torch.isin(rows.argmax(-1), self.stop_ids)
        self.parts.append((token_statistics(rows, overwrite=True), active))
        return scores


def generated_statistics(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_token_id: int,
    cache: GenerationCache | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Statistics of the greedy continuation of each prompt (KV cache, batched, left padding),
    up to and including its end-of-turn token or ``max_new_tokens``; each statistic's row; and the
    prompts' embeddings, from the decoder's pass over the prompts that generation makes anyway.
    ``cache``: the KV cache (``lightning_al.model.inference.generate_greedy``; default: the model's
    ``generation_cache``, static where the model supports it)."""
    input_ids = batch["input_ids"]
    collector = _StepStatistics(input_ids.shape[0], torch.tensor(stop_ids, device=input_ids.device))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids, pad_token_id=pad_token_id
    )
    with clean_generation_config(model, stop_ids, pad_token_id), captured_prefill(model) as prefill:
        generate_greedy(model, input_ids, batch["attention_mask"], config, cache,
                        logits_processor=LogitsProcessorList([collector]))
    stats = {k: torch.cat([s[k] for s, _ in collector.parts]) for k in ("entropy", "logprob", "margin")}
    rows = torch.cat([r for _, r in collector.parts])
    return stats, rows, prompt_embeddings(prefill["hidden"], batch)
