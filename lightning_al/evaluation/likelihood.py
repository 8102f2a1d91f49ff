"""Log-likelihood of short continuations after a batch of prompts (multiple-choice answers)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from lightning_al.model.head import output_head
from lightning_al.model.inference import decoder_hidden_states


@torch.no_grad()
def choice_logprobs(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], continuations: list[list[list[int]]]
) -> list[torch.Tensor]:
    """Sum of log p(continuation tokens | prompt) for every choice of every prompt in a left-padded batch.

    ``continuations[i][c]`` holds the token ids of choice c of prompt i. When every continuation is
    one token (" A" ... " D" with the usual tokenizers) the prompts run once and the choices are read
    at the last position; otherwise each (prompt, choice) pair is its own sequence, the choice
    appended after the prompt and padding on the right. The LM head runs only where it is read, and
    it is the model's exact head (``output_head``: soft-capping and logit scaling included).
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    device = input_ids.device
    head = output_head(model)
    width = input_ids.shape[1]
    if all(len(c) == 1 for choices in continuations for c in choices):
        hidden = decoder_hidden_states(model, input_ids, mask)[:, -1]
        logp = torch.log_softmax(head(hidden), -1)
        return [logp[i, torch.tensor([c[0] for c in choices], device=device)] for i, choices in enumerate(continuations)]
    pairs = [(i, c) for i, choices in enumerate(continuations) for c in choices]
    longest = max(len(c) for _, c in pairs)
    ids = torch.full((len(pairs), width + longest), 0, dtype=torch.long, device=device)
    pair_mask = torch.zeros_like(ids)
    targets = torch.full((len(pairs), longest), -1, dtype=torch.long, device=device)
    for p, (i, c) in enumerate(pairs):
        ids[p, :width], pair_mask[p, :width] = input_ids[i], mask[i]
        ids[p, width : width + len(c)] = torch.tensor(c, device=device)
        pair_mask[p, width : width + len(c)] = 1
        targets[p, : len(c)] = torch.tensor(c, device=device)
    hidden = decoder_hidden_states(model, ids, pair_mask)
    # The distribution at column width - 1 + j predicts continuation token j.
    rows, steps = (targets >= 0).nonzero(as_tuple=True)
    logp = torch.log_softmax(head(hidden[rows, width - 1 + steps]), -1)
    token_logp = logp.gather(-1, targets[rows, steps].unsqueeze(-1)).squeeze(-1)
    totals = torch.zeros(len(pairs), dtype=token_logp.dtype, device=device).index_add_(0, rows, token_logp)
    counts = [len(choices) for choices in continuations]
    return list(torch.split(totals, counts))
