"""Turn pool examples into token ids: chat template, response-only labels, truncation."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

#: Used when a tokenizer has no chat template (base models).
PLAIN_TEMPLATE = "{system}### Instruction:\n{prompt}\n\n### Response:\n"
#: The date given to chat templates that write one (Llama 3.1-3.3: "Today Date: ..."): the day's date would make a
#: prompt's tokens depend on when it was rendered, so a pool tokenized one day and a benchmark built another (or two
#: cells of a study) would see different prompts. This is the default those templates use themselves.
TEMPLATE_DATE = "26 Jul 2024"

#: What every chat template is rendered with besides the messages.
_TEMPLATE_KWARGS = {"date_string": TEMPLATE_DATE}


def reads_the_clock(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template writes today's date without a ``date_string`` to fix it (transformers renders
    ``strftime_now`` with the clock and turns a callable passed in its place into text)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "strftime_now" in template and "date_string" not in template


def chat_messages(system: str, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def prompt_text(tokenizer: PreTrainedTokenizerBase, system: str, prompt: str) -> str:
    """The text the model sees before it answers: the chat template with the generation prompt."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(chat_messages(system, prompt), tokenize=False, add_generation_prompt=True,
                                             **_TEMPLATE_KWARGS)
    return PLAIN_TEMPLATE.format(system=f"{system}\n\n" if system else "", prompt=prompt)


def response_text(tokenizer: PreTrainedTokenizerBase, system: str, prompt: str, response: str) -> str:
    """What the model must produce after the prompt, end-of-turn marker included and nothing after it.

    Derived as the chat template's full conversation minus its prompt, so that the end-of-turn
    token of the tokenizer's own template (``<|eot_id|>``, ``<|im_end|>``, ...) is learnt; cut after
    that marker (see :func:`through_end_of_turn`).
    """
    if not tokenizer.chat_template:
        return response + (tokenizer.eos_token or "")
    messages = chat_messages(system, prompt) + [{"role": "assistant", "content": response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False, **_TEMPLATE_KWARGS)
    head = prompt_text(tokenizer, system, prompt)
    if not full.startswith(head):
        raise ValueError("the tokenizer's chat template renders the prompt differently with and without the answer")
    return through_end_of_turn(tokenizer, full[len(head) :], response)


def through_end_of_turn(tokenizer: PreTrainedTokenizerBase, tail: str, response: str) -> str:
    """``tail`` (the response as the template writes it) up to and including the first special token after the
    response's own text.

    ChatML templates (SmolLM2, Qwen) write a newline after ``<|im_end|>`` and Gemma's after ``<end_of_turn>``:
    generation stops at the marker, so that newline is never produced, yet it would be a trained target and
    count in the held-out NLL. A template whose turn ends in plain text, or that rewrites the response so it
    cannot be found, is left as it is.
    """
    content = response.strip()
    begin = tail.find(content)
    if begin < 0:
        return tail
    after = begin + len(content)
    specials = set(tokenizer.all_special_tokens) | {
        added.content for added in tokenizer.added_tokens_decoder.values() if added.special
    }
    # The earliest marker; of two starting there, the longer (a special token may be a prefix of another).
    found = [(at, -len(token)) for token in specials if token and (at := tail.find(token, after)) >= 0]
    if not found:
        return tail
    at, minus_length = min(found)
    return tail[: at - minus_length]


def content_span(text: str, content: str, offsets: list[tuple[int, int]] | None, num_tokens: int) -> tuple[int, int]:
    """Token range [start, end) of the user's own text inside the templated prompt.

    ``prompt``-mode scoring covers only these tokens: template tokens (role headers, the
    generation prompt) are the same in every example and say nothing about its uncertainty.
    Without offsets (slow tokenizers) the whole prompt is the content.
    """
    stripped = content.strip()
    begin = text.rfind(stripped)
    if offsets is None or begin < 0 or not stripped:
        return 0, num_tokens
    finish = begin + len(stripped)
    inside = [i for i, (a, b) in enumerate(offsets) if a < finish and b > begin]
    return (inside[0], inside[-1] + 1) if inside else (0, num_tokens)


def tokenize_example(
    example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int, max_prompt_length: int
) -> dict[str, Any]:
    """Token ids of one example: ``input_ids`` = prompt + response, ``prompt_length`` marks the split.

    A prompt longer than ``max_prompt_length`` keeps its leading BOS and its end (the question and the
    generation prompt); the response is cut at ``max_length``. ``truncated`` records either cut.
    """
    system, prompt = example["system"], example["prompt"]
    text = prompt_text(tokenizer, system, prompt)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    span = content_span(text, prompt, encoded.get("offset_mapping"), len(encoded["input_ids"]))
    lead = leading_ids(tokenizer)
    prompt_ids, (content_start, content_end) = with_leading_ids(encoded["input_ids"], span, lead)
    response_ids = tokenizer(response_text(tokenizer, system, prompt, example["response"]), add_special_tokens=False)[
        "input_ids"
    ]
    return _truncate(prompt_ids, response_ids, content_start, content_end, max_length, max_prompt_length, len(lead))


def leading_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special ids the tokenizer puts before a text of its own accord: Llama's, Mistral's or Gemma's BOS;
    none for GPT-2, Qwen or SmolLM2."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, lead: list[int] | None = None) -> list[int]:
    """``text``'s ids after the tokenizer's leading special ids (its BOS, ``leading_ids``) and with nothing after:
    a tokenizer set to add an EOS (``add_eos_token``) would otherwise end a prompt the model must continue."""
    lead = leading_ids(tokenizer) if lead is None else lead
    return lead + tokenizer(text, add_special_tokens=False)["input_ids"]


def with_leading_ids(prompt_ids: list[int], span: tuple[int, int], lead: list[int]) -> tuple[list[int], tuple[int, int]]:
    """``prompt_ids`` starting with ``lead`` (and the content span moved with it), unless they already do: either
    way they start with it, which ``_truncate`` keeps.

    Pool prompts are tokenized without special tokens because a chat template writes its own (Llama 3's BOS
    among them); one that does not, or the plain template of a base model, would otherwise leave out the BOS
    the model was trained with, and that every text tokenized the usual way (MMLU's prompts) has.
    """
    if not lead or prompt_ids[: len(lead)] == lead:
        return prompt_ids, span
    return lead + prompt_ids, (span[0] + len(lead), span[1] + len(lead))


def _truncate(
    prompt_ids: list[int], response_ids: list[int], content_start: int, content_end: int, max_length: int,
    max_prompt_length: int, keep: int = 0,
) -> dict[str, Any]:
    """Cut a long prompt after its first ``keep`` ids (the leading BOS) and a long response at its end."""
    truncated = len(prompt_ids) > max_prompt_length or len(prompt_ids) + len(response_ids) > max_length
    keep = min(keep, max_prompt_length)
    cut = max(len(prompt_ids) - max_prompt_length, 0)
    prompt_ids = prompt_ids[:keep] + prompt_ids[keep + cut :]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "prompt_length": len(prompt_ids),
        "content_start": max(content_start - cut, keep),
        "content_end": max(content_end - cut, keep),
        "response_length": len(response_ids),
        "truncated": truncated,
    }


def tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, max_length: int, max_prompt_length: int
) -> dict[str, list[Any]]:
    """:func:`tokenize_example` over a batch (``datasets.map(batched=True)``): the same output, row for row.

    The chat template is rendered per example, but the texts go to the (fast) tokenizer as one
    batch, which is where a long pool spends its set-up time.
    """
    systems, prompts = batch["system"], batch["prompt"]
    prompt_texts = [prompt_text(tokenizer, system, prompt) for system, prompt in zip(systems, prompts)]
    response_texts = [
        response_text(tokenizer, system, prompt, response)
        for system, prompt, response in zip(systems, prompts, batch["response"])
    ]
    encoded = tokenizer(prompt_texts, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    responses = tokenizer(response_texts, add_special_tokens=False)["input_ids"]
    offsets = encoded.get("offset_mapping")
    out: dict[str, list[Any]] = {key: [] for key in ("input_ids", "prompt_length", "content_start", "content_end",
                                                      "response_length", "truncated")}
    lead = leading_ids(tokenizer)
    for i, (prompt_ids, response_ids) in enumerate(zip(encoded["input_ids"], responses)):
        span = content_span(prompt_texts[i], prompts[i], offsets[i] if offsets is not None else None,
                            len(prompt_ids))
        prompt_ids, (start, end) = with_leading_ids(prompt_ids, span, lead)
        row = _truncate(prompt_ids, response_ids, start, end, max_length, max_prompt_length, len(lead))
        for key, value in row.items():
            out[key].append(value)
    return out
