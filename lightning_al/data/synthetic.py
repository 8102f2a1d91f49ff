"""Seeded synthetic instruction tasks with exact answers.

The offline demo trains a tiny character-level model on these, so every string
is short ASCII and every answer is computable from its prompt. Difficulty grows
with the sampled length, which lets active-learning strategies show whether they
prefer hard examples.

Two families. In the first (copy, reverse, sort, upper, count, first, last, length,
next) the input is lowercase letters, like the instruction, so reading it means finding
it by position, which a tiny randomly initialised model learns slowly and abruptly
(length, which needs only a count, is the exception). In the second
(after, position, max_digit, min_digit, add_digits), which the demo uses, the input is
uppercase letters or digits, which stand out from the instruction, so the model can
find it by what it is; these are learnt from tens to hundreds of examples, at rates
that differ from task to task.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence

Example = dict[str, str]
TaskFn = Callable[[random.Random, int], tuple[str, str]]

# Counting over a small alphabet keeps counts above zero most of the time, so
# the answer actually depends on the input.
_COUNT_ALPHABET = "abcde"


def _letters(rng: random.Random, length: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def _copy(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Copy the string: {text}", text


def _reverse(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Reverse the string: {text}", text[::-1]


def _sort(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Sort the letters: {text}", "".join(sorted(text))


def _upper(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Uppercase the string: {text}", text.upper()


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _add(rng: random.Random, length: int) -> tuple[str, str]:
    # `length` counts the digits of both operands together.
    digits = max(1, length // 2)
    a, b = _operand(rng, digits), _operand(rng, digits)
    return f"Add the numbers: {a} + {b}", str(a + b)


def _count(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length, _COUNT_ALPHABET)
    letter = rng.choice(_COUNT_ALPHABET)
    return f"Count the letter {letter} in: {text}", str(text.count(letter))


def _first(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"First letter of: {text}", text[0]


def _last(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Last letter of: {text}", text[-1]


def _length(rng: random.Random, length: int) -> tuple[str, str]:
    text = _letters(rng, length)
    return f"Length of: {text}", str(len(text))


def _next(rng: random.Random, length: int) -> tuple[str, str]:
    # One letter whatever the length: the easiest mapping to learn, a floor for the others.
    letter = rng.choice(string.ascii_lowercase)
    return f"Next letter after: {letter}", chr((ord(letter) - ord("a") + 1) % 26 + ord("a"))


def _after(rng: random.Random, length: int) -> tuple[str, str]:
    # A 26-entry lookup: learnt once every letter has been seen a few times.
    letter = rng.choice(string.ascii_uppercase)
    return f"Letter after: {letter}", _next_in(string.ascii_uppercase, letter)


def _position(rng: random.Random, length: int) -> tuple[str, str]:
    # A 26-entry lookup with one- or two-digit answers.
    letter = rng.choice(string.ascii_uppercase)
    return f"Alphabet position of: {letter}", str(string.ascii_uppercase.index(letter) + 1)


def _max_digit(rng: random.Random, length: int) -> tuple[str, str]:
    digits = _letters(rng, length, string.digits)
    return f"Largest digit in: {digits}", max(digits)


def _min_digit(rng: random.Random, length: int) -> tuple[str, str]:
    digits = _letters(rng, length, string.digits)
    return f"Smallest digit in: {digits}", min(digits)


def _add_digits(rng: random.Random, length: int) -> tuple[str, str]:
    # 100 ordered pairs: the slowest of the family to learn, whatever the length.
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"Add the digits: {a} + {b}", str(a + b)


def _next_in(alphabet: str, letter: str) -> str:
    return alphabet[(alphabet.index(letter) + 1) % len(alphabet)]


TASKS: dict[str, TaskFn] = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "add": _add,
    "count": _count,
    "upper": _upper,
    # Short answers a tiny model learns from a few hundred examples: the demo's curves move.
    "first": _first,
    "last": _last,
    "length": _length,
    "next": _next,
    # Inputs the instruction does not contain (uppercase letters, digits): a tiny random model finds them
    # by content and learns these from tens to hundreds of examples. The demo's tasks.
    "after": _after,
    "position": _position,
    "max_digit": _max_digit,
    "min_digit": _min_digit,
    "add_digits": _add_digits,
}


def _validate(num_examples: int, tasks: Sequence[str], min_length: int, max_length: int) -> None:
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"tasks: unknown or missing task names {unknown or list(tasks)}; valid names are {sorted(TASKS)}"
        )
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}")


def generate_examples(
    num_examples: int,
    tasks: Sequence[str],
    seed: int,
    min_length: int,
    max_length: int,
) -> list[Example]:
    """Generate a deterministic list of synthetic examples.

    Tasks are assigned round-robin so every requested task is equally
    represented; the input length of each example is drawn uniformly from
    ``[min_length, max_length]``.

    Args:
        num_examples: Number of examples to generate.
        tasks: Task names, a subset of ``TASKS``.
        seed: Seed of the private random generator; equal seeds give equal examples.
        min_length: Shortest input length (letters, or total digits for ``add``; digits for
            ``max_digit`` / ``min_digit``; ``next``, ``after``, ``position`` and ``add_digits`` ignore it).
        max_length: Longest input length.

    Returns:
        Dicts with the pool columns ``id``, ``task``, ``system``, ``prompt``, ``response``.

    Raises:
        ValueError: On an unknown task name or an invalid length range.
    """
    _validate(num_examples, tasks, min_length, max_length)
    rng = random.Random(seed)
    width = max(5, len(str(num_examples - 1)))
    examples = []
    for index in range(num_examples):
        task = tasks[index % len(tasks)]
        prompt, response = TASKS[task](rng, rng.randint(min_length, max_length))
        examples.append(
            {"id": f"{task}-{index:0{width}d}", "task": task, "system": "", "prompt": prompt, "response": response}
        )
    return examples
