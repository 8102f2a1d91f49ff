"""Token-level uncertainty statistics and their per-example reductions (BRIEF §2), in nats.

For a next-token distribution p over the vocabulary and the token y that follows:
  entropy     H(p) = -sum_v p(v) log p(v)
  logprob     log p(y)            (y = the greedy token in generated/first mode, the next prompt token in prompt mode)
  margin      p(top1) - p(top2)
Per example: the mean over its scored positions of each (``entropy``, ``confidence``, ``margin``),
plus ``min_margin``, ``max_entropy`` and ``num_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Per-example scores returned by ``LoRALanguageModel.predict_step``.
SCORE_NAMES = ("entropy", "confidence", "margin", "min_margin", "max_entropy", "num_tokens")


def token_statistics(
    logits: torch.Tensor, next_tokens: torch.Tensor | None = None, overwrite: bool = False
) -> dict[str, torch.Tensor]:
    """Statistics of each row of ``logits`` [N, V]; ``next_tokens`` [N] (None: the greedy token).

    Computed in float32 at least (bf16 log-softmax loses the small probabilities that make up the
    entropy). A token with logit -inf (one that cannot follow) adds 0 to the entropy (0 log 0 = 0).
    ``overwrite``: ``logits`` may be overwritten, which saves one [N, V] buffer (the peak of a chunk
    is then the logits plus the probabilities, twice N x V floats).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits, overwrite = logits.float(), True
    # log_softmax by hand, so that its buffers can be reused: logp = (x - max) - log sum exp(x - max).
    top = logits.max(-1, keepdim=True).values
    logp = logits.sub_(top) if overwrite else logits - top
    p = logp.exp()
    normaliser = p.sum(-1, keepdim=True)
    p.div_(normaliser)
    logp.sub_(normaliser.log())
    if next_tokens is None:
        logprob = logp.max(-1).values
    else:
        logprob = logp.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    top2 = p.topk(2, dim=-1).values
    logp.clamp_(min=torch.finfo(logp.dtype).min)  # -inf -> finite, so that 0 * log 0 is 0, not NaN
    entropy = -_row_dot(p, logp)
    return {"entropy": entropy, "logprob": logprob, "margin": top2[..., 0] - top2[..., 1]}


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two [..., V] tensors. A batched matrix product makes no [..., V]
    buffer, but is slow for a few long rows (a generation step), whose buffer is small anyway."""
    if a[..., 0].numel() <= 64:
        return (a * b).sum(-1)
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def chunked_token_statistics(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    next_tokens: torch.Tensor | None,
    chunk_size: int = 1024,
    max_elements: int | None = None,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``token_statistics(postprocess(lm_head(hidden)))`` for hidden states [N, H], without full logits.

    At most ``chunk_size`` rows at a time, and, when ``max_elements`` is given, at most that many
    logits at once: a linear head is then applied one block of the vocabulary at a time and the
    statistics are accumulated across blocks (online softmax), so that a large vocabulary (128K)
    costs neither memory nor extra passes over the head's weights. Any other head (not a plain
    linear layer, e.g. sharded) is called as a whole on fewer rows. ``postprocess`` is the model's own
    elementwise logit post-processing (soft-capping, scaling; see ``lightning_al.model.head``), applied
    to every block, so that the statistics are those of the model's own logits.
    """
    rows, block, linear = max(1, chunk_size), None, None
    if max_elements is not None:
        linear = _linear_weights(lm_head, hidden.shape[-1])
        if linear is not None:
            # Long row chunks first (each reads the head's weights once), then split the vocabulary.
            vocab = linear[0].shape[0]
            rows = max(1, min(rows, max_elements // min(vocab, _MIN_VOCAB_BLOCK)))
            block = max_elements // rows if max_elements // rows < vocab else None
        else:
            rows = max(1, min(rows, max_elements // lm_head(hidden[:1]).shape[-1]))
    parts = []
    for start in range(0, hidden.shape[0], rows):
        stop = start + rows
        chunk_tokens = None if next_tokens is None else next_tokens[start:stop]
        if block is not None:
            parts.append(_blocked_statistics(hidden[start:stop], *linear, chunk_tokens, block, postprocess))
        else:
            logits = lm_head(hidden[start:stop])
            if postprocess is not None:
                logits = postprocess(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)
            parts.append(token_statistics(logits, chunk_tokens, overwrite=True))
    if not parts:  # no scored position in the batch
        empty = hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
        return {k: empty for k in ("entropy", "logprob", "margin")}
    return {k: torch.cat([p[k] for p in parts]) for k in ("entropy", "logprob", "margin")}


#: Smallest vocabulary block of the online-softmax path (smaller ones spend their time in Python).
_MIN_VOCAB_BLOCK = 256


def _linear_weights(head: torch.nn.Module, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of an LM head that is a plain ``nn.Linear`` (also the active copy inside peft's
    ``ModulesToSaveWrapper``, for a head trained in full), else None."""
    module = head
    if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
        adapters = [] if module.disable_adapters else list(module.active_adapters)
        if len(adapters) > 1:
            return None
        module = module.modules_to_save[adapters[0]] if adapters else module.original_module
    if type(module) is not torch.nn.Linear:
        return None
    weight = module.weight
    # Sharded (FSDP, DTensor) or quantized weights: call the module instead.
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.dim() != 2 or weight.shape[1] != hidden_size:
        return None
    return weight, module.bias


def _blocked_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    next_tokens: torch.Tensor | None,
    block: int,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``token_statistics(postprocess(hidden @ weight.T + bias))``, one block of ``block`` vocabulary
    entries at a time (``postprocess``: an elementwise function, the model's own logit post-processing).

    Running per row: the largest logit so far ``m``, ``s = sum exp(l - m)``, ``t = sum exp(l - m) (l - m)``
    (rescaled when m grows), the two largest logits, and the next token's logit. Then log Z = m + log s,
    H = log s - t / s, log p(y) = l_y - log Z, margin = exp(l_1 - log Z) - exp(l_2 - log Z).
    """
    n = hidden.shape[0]
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    kwargs = {"dtype": dtype, "device": hidden.device}
    m = torch.full((n,), float("-inf"), **kwargs)
    s, t = torch.zeros(n, **kwargs), torch.zeros(n, **kwargs)
    top = torch.full((n, 2), float("-inf"), **kwargs)
    target = torch.zeros(n, **kwargs)
    lowest = torch.finfo(dtype).min
    for v0 in range(0, weight.shape[0], block):
        v1 = min(v0 + block, weight.shape[0])
        logits = torch.nn.functional.linear(hidden, weight[v0:v1], None if bias is None else bias[v0:v1])
        logits = logits.to(dtype)
        if postprocess is not None:
            logits = postprocess(logits)
        block_top = logits.topk(min(2, v1 - v0), dim=-1).values
        top = torch.cat([top, block_top], dim=-1).topk(2, dim=-1).values
        if next_tokens is not None:
            inside = (next_tokens >= v0) & (next_tokens < v1)
            column = (next_tokens - v0).clamp(0, v1 - v0 - 1).unsqueeze(-1)
            target = torch.where(inside, logits.gather(-1, column).squeeze(-1), target)
        new_m = torch.maximum(m, block_top[:, 0])  # the block's largest logit (no second pass over it)
        # Rescale the sums to the new reference (rows with nothing yet stay at zero, not NaN).
        shift = torch.where(s > 0, m - new_m, torch.zeros_like(m))
        scale = shift.exp()
        t = scale * (t + shift * s)
        s = scale * s
        # Rows whose logits are all -inf so far keep 0 as reference (-inf - -inf would be NaN).
        d = logits.sub_(torch.where(new_m > float("-inf"), new_m, torch.zeros_like(new_m)).unsqueeze(-1))
        e = d.exp()
        s = s + e.sum(-1)
        d.clamp_(min=lowest)  # -inf logits: 0 * log 0 = 0, not NaN
        t = t + _row_dot(e, d)
        m = new_m
        del logits, d, e
    log_s = s.log()
    log_z = m + log_s
    logprob = (top[:, 0] if next_tokens is None else target) - log_z
    return {
        "entropy": log_s - t / s,
        "logprob": logprob,
        "margin": (top[:, 0] - log_z).exp() - (top[:, 1] - log_z).exp(),
    }


def per_example_scores(stats: dict[str, torch.Tensor], example: torch.Tensor, num_examples: int) -> dict[str, torch.Tensor]:
    """Reduce token statistics to per-example scores; ``example`` [N] says which example each token is of.

    An example with no scored token gets NaN scores and num_tokens 0.
    """
    dtype = stats["entropy"].dtype
    count = torch.zeros(num_examples, dtype=dtype, device=example.device).index_add_(
        0, example, torch.ones_like(stats["entropy"])
    )

    def mean(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_examples, dtype=dtype, device=example.device).index_add_(0, example, values) / count

    def extreme(values: torch.Tensor, reduce: str) -> torch.Tensor:
        out = torch.full((num_examples,), float("nan"), dtype=dtype, device=example.device)
        return out.scatter_reduce(0, example, values, reduce=reduce, include_self=False)

    return {
        "entropy": mean(stats["entropy"]),
        "confidence": mean(stats["logprob"]),
        "margin": mean(stats["margin"]),
        "min_margin": extreme(stats["margin"], "amin"),
        "max_entropy": extreme(stats["entropy"], "amax"),
        "num_tokens": count,
    }
