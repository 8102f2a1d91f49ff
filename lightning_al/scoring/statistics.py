"""Token-level uncertainty statistics and their per-example reductions (BRIEF §2), in nats.

For a next-token distribution p over the vocabulary and the token y that follows:
  entropy     H(p) = -sum_v p(v) log p(v)
  logprob     log p(y)            (y = the greedy token in generated/first mode, the next prompt token in prompt mode)
  margin      p(top1) - p(top2)
Per example: the mean over its scored positions of each (``entropy``, ``confidence``, ``margin``),
plus ``min_margin``, ``max_entropy`` and ``num_tokens``.
"""

from __future__ import annotations

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
    # One dot product per row: no [N, V] product buffer.
    entropy = -(p.unsqueeze(-2) @ logp.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    return {"entropy": entropy, "logprob": logprob, "margin": top2[..., 0] - top2[..., 1]}


def chunked_token_statistics(
    hidden: torch.Tensor, lm_head: torch.nn.Module, next_tokens: torch.Tensor | None, chunk_size: int = 1024
) -> dict[str, torch.Tensor]:
    """``token_statistics(lm_head(hidden))`` for hidden states [N, H], ``chunk_size`` rows at a time,
    so that at most chunk_size x vocab logits exist at once (vocab 128K makes full logits the peak)."""
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        stop = start + chunk_size
        chunk_tokens = None if next_tokens is None else next_tokens[start:stop]
        parts.append(token_statistics(lm_head(hidden[start:stop]), chunk_tokens, overwrite=True))
    return {k: torch.cat([p[k] for p in parts]) for k in ("entropy", "logprob", "margin")}


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
