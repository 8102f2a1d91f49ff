"""Answer extraction and exact match for generated chain-of-thought responses.

Chain-of-thought exemplars (BIG-Bench Hard, FLAN CoT) end their reasoning with
``So the answer is X.``. A model that follows them is scored by taking the text
after the *last* "the answer is" on its line, dropping the final period, and
comparing it with the target after stripping whitespace, case-insensitively --
the convention of Suzgun et al. (2022) and lm-evaluation-harness.

Typical use on a generation::

    text = truncate_at_stop(generated, ("Q:", "\\n\\n"))
    exact_match(extract_answer(text), target)

or, when references are full responses rather than bare targets::

    exact_match(answer_of(generated, reference), reference_answer(reference))
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ANSWER_MARKER = "the answer is"


def extract_answer(text: str, marker: str = ANSWER_MARKER) -> str | None:
    """The answer stated after the last ``marker`` in ``text``, or ``None`` when there is none.

    The marker is matched case-insensitively ("The answer is", "the answer is").
    The answer is the rest of the marker's line, stripped, with a leading ``:``
    ("The answer is: 42") and the final period(s) removed; periods inside the answer
    are kept ("3.5", "U.S.A"). The *last* occurrence wins, so a model that restates
    or corrects itself is scored on its final answer.

    Examples::

        extract_answer("So the answer is (A).")       # "(A)"
        extract_answer("the answer is New York City.")  # "New York City"
        extract_answer("I don't know")                 # None
    """
    matches = list(_marker_pattern(marker).finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    line = rest.splitlines()[0] if rest else ""
    answer = line.strip()
    if answer.startswith(":"):
        answer = answer[1:].strip()
    answer = answer.rstrip(".").strip()
    return answer or None


def normalize_answer(text: str) -> str:
    """``text`` stripped, with whitespace runs collapsed to one space, casefolded.

    Punctuation is kept: "(A)" and "A" are different answers, as are "] )" and "])".
    """
    return " ".join(text.split()).casefold()


def exact_match(prediction: str | None, target: str) -> bool:
    """Whether ``prediction`` equals ``target`` after stripping, case-insensitively.

    ``None`` (no answer could be extracted) never matches. Final periods are removed
    from both sides before comparing, so a bare target "42." matches a prediction
    "42" and vice versa; BIG-Bench Hard targets carry no final period.
    """
    if prediction is None:
        return False
    return _comparable(prediction) == _comparable(target)


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut just before the earliest occurrence of any of ``stop_strings``.

    A model prompted with few-shot exemplars tends to keep going with a new
    "Q: ..." after its answer; cutting there keeps the answer of the question asked.
    The text is returned unchanged when no stop string occurs; empty stop strings
    are ignored.
    """
    cut = len(text)
    for stop in stop_strings:
        if stop:
            position = text.find(stop)
            if position != -1:
                cut = min(cut, position)
    return text[:cut]


def reference_answer(response: str, marker: str = ANSWER_MARKER) -> str:
    """The answer of a reference ``response``: what follows ``marker``, or else the whole response.

    Chain-of-thought references ("... So the answer is 12.") yield their stated
    answer ("12"); short-answer references, whose response is the answer itself
    (e.g. the synthetic tasks), yield the response stripped -- as does a
    response in which nothing follows the marker.
    """
    answer = extract_answer(response, marker)
    return answer if answer is not None else response.strip()


def answer_of(generated: str, reference: str, marker: str = ANSWER_MARKER) -> str | None:
    """The prediction in ``generated`` to compare with :func:`reference_answer` of ``reference``.

    When the reference contains ``marker`` (case-insensitively), the generation is
    expected to state its answer the same way: its answer is :func:`extract_answer`
    of it (``None`` if it states none). Otherwise the reference is a short answer and so is the
    prediction: the whole generated text, stripped. Truncate the generation at
    the stop strings first (:func:`truncate_at_stop`), since everything left counts.
    """
    if _marker_pattern(marker).search(reference):
        return extract_answer(generated, marker)
    return generated.strip()


def _marker_pattern(marker: str) -> re.Pattern[str]:
    if not marker:
        raise ValueError("the answer marker must be a non-empty string")
    return re.compile(re.escape(marker), flags=re.IGNORECASE)


def _comparable(text: str) -> str:
    return normalize_answer(text.strip().rstrip("."))
