"""The LM head as the model's own forward applies it.

Scoring and log-likelihood evaluation run the LM head themselves, in chunks, on the decoder's
hidden states, so that full logits of a padded batch never exist. That is only exact if it
reproduces what the model's forward does between its decoder and its returned logits. Several
families do more than ``lm_head(hidden)``: Gemma 2/3 soft-cap the logits (``cap * tanh(x / cap)``),
Cohere multiplies them by ``logit_scale``, Granite divides them by ``logits_scaling``; a future
family may do something new. Getting it wrong changes every score silently.

So the post-processing is found from the model itself, by one probe forward of a three-token
input (no list of model names): a hook on the head records its input, which must equal our own
``decoder_hidden_states``, and replaces its output with a designed grid of logits spanning
[-1e4, 1e4]; the logits the forward returns then show the post-processing as a function of the
head's output, which must be the identity, a scaling ``a * x`` or a soft-cap ``c * tanh(x / c)``
(its constant read off the probe, then checked on the whole grid). Anything else is refused, with
an error that names the model class, never approximated.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from lightning_al.model.inference import decoder_hidden_states

#: Largest designed logit of the probe: far beyond any soft-cap, so that tanh saturates there.
_PROBE_RANGE = 1e4
#: Relative tolerance of the probe's checks: the forward may compute in float32 (``logits.float()``).
_PROBE_RTOL = 1e-5


class UnsupportedHeadError(ValueError):
    """The model's forward does something to its logits that the chunked head cannot reproduce."""


@dataclass(frozen=True)
class OutputHead:
    """``logits = post(head(hidden))``, the way the model's forward computes them.

    Attributes:
        module: The LM head (``model.get_output_embeddings()``).
        scale: Multiplier applied to the head's output (Cohere's ``logit_scale``, 1 / Granite's
            ``logits_scaling``); 1.0 for most models.
        softcap: ``c`` of the final soft-capping ``c * tanh(x / c)`` (Gemma 2), applied after ``scale``; None if none.
    """

    module: torch.nn.Module
    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's post-processing of raw head outputs (in place where the tensor allows)."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits at these hidden states, in float32 at least (the post-processing of
        half-precision logits loses the small differences that log-likelihoods are made of)."""
        logits = self.module(hidden)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self.postprocess(logits)


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[float, float | None]] = weakref.WeakKeyDictionary()


def output_head(model: PreTrainedModel) -> OutputHead:
    """The model's exact LM head (probed once per model object, then cached).

    Raises:
        UnsupportedHeadError: the forward changes the decoder's output before the head, or post-processes
            the logits in a way that is not a scaling or a soft-cap.
    """
    if hasattr(model, "get_base_model"):  # a peft model: the adapters live inside the base model
        model = model.get_base_model()
    if model not in _CACHE:
        _CACHE[model] = _probe(model)
    scale, softcap = _CACHE[model]
    return OutputHead(model.get_output_embeddings(), scale, softcap)


@torch.no_grad()
def _probe(model: PreTrainedModel) -> tuple[float, float | None]:
    head = model.get_output_embeddings()
    name = type(model).__name__
    device = next(model.parameters()).device
    input_ids = torch.tensor([[0, 1, 2]], device=device) % model.config.get_text_config().vocab_size
    mask = torch.ones_like(input_ids)
    seen: dict[str, torch.Tensor] = {}

    def replace_output(module, args, output):
        seen["hidden"] = args[0].detach()
        # float64, so that the forward's own post-processing runs at least in float32 whatever the weights' dtype.
        grid = torch.linspace(-_PROBE_RANGE, _PROBE_RANGE, output.shape[-1], dtype=torch.float64, device=device)
        grid[: min(6, len(grid))] = torch.tensor([0.0, 1.0, -1.0, 0.5, 3.0, -7.25], dtype=torch.float64)[: len(grid)]
        seen["grid"] = grid
        return grid.expand(*output.shape[:-1], -1).clone()

    was_training = model.training
    model.eval()
    handle = head.register_forward_hook(replace_output)
    try:
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        ours = decoder_hidden_states(model, input_ids, mask)
    finally:
        handle.remove()
        model.train(was_training)
    if "grid" not in seen:
        raise UnsupportedHeadError(f"{name}: its forward does not call get_output_embeddings(); cannot score it exactly. "
                                   f"{_ADVICE}")
    hidden = seen["hidden"]
    if hidden.shape[-2] != ours.shape[-2] or not torch.allclose(hidden.float(), ours.float(), rtol=1e-4, atol=1e-5):
        raise UnsupportedHeadError(f"{name}: its forward changes the decoder's hidden states before the LM head; "
                                   f"cannot score it exactly. {_ADVICE}")
    x, y = seen["grid"], logits[0, -1].double()
    for scale, softcap in _candidates(x, y):
        post = OutputHead(head, scale, softcap).postprocess(x)
        if torch.allclose(post, y, rtol=_PROBE_RTOL, atol=_PROBE_RTOL):
            return scale, softcap
    raise UnsupportedHeadError(
        f"{name}: its forward post-processes the LM head's logits in a way that is neither a scaling nor a "
        f"soft-cap (logit {float(x[4])} became {float(y[4])}); the chunked scoring head cannot reproduce it. {_ADVICE}"
    )


_ADVICE = ("Use model.score_source=generated, which reads the logits that generate() returns; prompt/first scoring "
           "and log-likelihood evaluation need an exactly reproducible head.")


def _candidates(x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float | None]]:
    """(scale, softcap) pairs to check, with constants read off the probe: the identity, a scaling
    (slope at x = 1) and a soft-cap (the saturated value at the largest logit)."""
    at = {float(v): float(w) for v, w in zip(x[:6], y[:6])}
    candidates: list[tuple[float, float | None]] = [(1.0, None)]
    if 1.0 in at and at[1.0] != 0:
        candidates.append((at[1.0], None))
    cap = float(y[x.argmax()])
    if cap > 0:
        candidates.append((1.0, cap))
    return candidates
