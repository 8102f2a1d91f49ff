"""Records (a file's, a hub dataset's) made into validated pool examples, one row at a time.

A field mapping names the columns of a pool's fields; every row is checked (text present, not empty,
decodable; a single-turn chat; a unique id) and becomes ``{id, task, system, prompt, response}``. A bad
row raises a :class:`DataValidationError` naming the source and the row (and its line, for text files),
or with ``drop_invalid`` is dropped and counted in one logged warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lightning_al.data.files import DataValidationError, InvalidRow
from lightning_al.data.pool_file import POOL_COLUMNS, Example

# (the sources' logger: a pool's dropped rows are reported under the name they always were)
logger = logging.getLogger("lightning_al.data.sources")

FIELD_NAMES = (*POOL_COLUMNS, "messages")

_CONVERSATION_FIELDS = ("system", "prompt", "response")
_LISTED_ROWS = 5


def _resolve_fields(fields: dict[str, str] | None, columns: list[str], source: str) -> dict[str, str]:
    """Map pool field names to source columns: explicit entries plus identity for existing columns."""
    explicit = dict(fields or {})
    for key, column in explicit.items():
        if key not in FIELD_NAMES:
            raise DataValidationError(f"{source}: fields.{key} is not a pool field; valid keys are {list(FIELD_NAMES)}")
        if column not in columns:
            raise DataValidationError(
                f"{source}: fields.{key} -> {column!r} names a missing column; available columns: {columns}"
            )
    if "messages" in explicit and {"prompt", "response"} & explicit.keys():
        raise DataValidationError(f"{source}: fields maps both messages and prompt/response; map only one of them")
    # Explicitly choosing `messages` must win over same-named prompt/response columns.
    skip = _CONVERSATION_FIELDS if "messages" in explicit else ()
    defaults = {name: name for name in FIELD_NAMES if name in columns and name not in explicit and name not in skip}
    mapping = {**defaults, **explicit}
    if "prompt" in mapping and "response" in mapping:
        mapping.pop("messages", None)
    elif "messages" in mapping:
        for name in _CONVERSATION_FIELDS:
            mapping.pop(name, None)
    else:
        raise DataValidationError(
            f"{source}: set fields.prompt and fields.response, or fields.messages; available columns: {columns}"
        )
    return mapping


def examples_of_records(
    records: Iterable[tuple[int, Any]],
    columns: list[str],
    source: str,
    fields: dict[str, str] | None,
    default_task: str,
    drop_invalid: bool,
    line_of: Callable[[int], int] | None,
) -> Iterator[Example]:
    mapping = _resolve_fields(fields, columns, source)  # (at once: a bad mapping fails before any row is read)
    return assemble(
        source,
        records,
        lambda row, record: _table_example(row, record, mapping, default_task),
        drop_invalid,
        line_of,
    )


def _table_example(row: int, record: dict[str, Any] | InvalidRow, mapping: dict[str, str], default_task: str) -> Example:
    if isinstance(record, InvalidRow):
        raise record  # a line that could not be parsed
    # A key absent from a JSON line reads as missing.
    record = {name: record.get(column) for name, column in mapping.items()}
    task = required_text(record["task"], "task") if "task" in mapping else default_task
    example_id = _example_id(record["id"]) if "id" in mapping else f"{task}-{row}"
    try:
        if "messages" in mapping:
            system, prompt, response = _split_messages(record["messages"])
        else:
            system = _optional_text(record["system"], "system") if "system" in mapping else ""
            prompt = required_text(record["prompt"], "prompt")
            response = required_text(record["response"], "response")
    except InvalidRow as err:
        raise InvalidRow(err.reason, example_id) from None
    return {"id": example_id, "task": task, "system": system, "prompt": prompt, "response": response}


def _example_id(value: Any) -> str:
    text = decode(value, "id") if isinstance(value, bytes) else str(value if value is not None else "")
    if not text.strip():
        raise InvalidRow("id is missing or empty")
    return text


def _split_messages(messages: Any) -> tuple[str, str, str]:
    """Split a single-turn chat into (system, prompt, response)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRow("messages is not a non-empty list")
    roles, contents = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InvalidRow(f"messages[{index}] is not a {{role, content}} mapping")
        roles.append(message["role"])
        contents.append(message["content"])
    n_system = next((index for index, role in enumerate(roles) if role != "system"), len(roles))
    if roles[n_system:] != ["user", "assistant"]:
        raise InvalidRow(
            f"messages roles {roles}: expected optional system turns, one user turn, then a final assistant turn"
        )
    system = "\n".join(_optional_text(content, "system message") for content in contents[:n_system])
    return system, required_text(contents[-2], "user message"), required_text(contents[-1], "assistant message")


def decode(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRow(f"{what} is not valid UTF-8") from None


def _optional_text(value: Any, what: str) -> str:
    """Validate a text value that may be absent (None becomes "")."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = decode(value, what)
    if not isinstance(value, str):
        raise InvalidRow(f"{what} is not a string but {type(value).__name__}")
    if "\ufffd" in value:
        raise InvalidRow(f"{what} contains U+FFFD, the mark of undecodable text")
    return value


def required_text(value: Any, what: str) -> str:
    if value is None:
        raise InvalidRow(f"{what} is missing")
    text = _optional_text(value, what)
    if not text.strip():
        raise InvalidRow(f"{what} is empty")
    return text


def assemble(
    source: str,
    records: Iterable[tuple[int, Any]],
    convert: Callable[[int, Any], Example],
    drop_invalid: bool,
    line_of: Callable[[int], int] | None,
) -> Iterator[Example]:
    """Convert records as they are read, dropping or raising on invalid ones, and check that ids are unique
    (the one thing kept of every row is its id)."""
    first_row_of_id: dict[str, int] = {}
    dropped: dict[str, list[int]] = defaultdict(list)
    total = 0
    for row, record in records:
        total += 1
        try:
            example = convert(row, record)
        except InvalidRow as err:
            if not drop_invalid:
                where = _location(row, line_of(row) if line_of is not None else None, err.example_id)
                raise DataValidationError(f"{source}: {where}: {err.reason}") from None
            dropped[err.reason].append(row)
            continue
        first_row = first_row_of_id.setdefault(example["id"], row)
        if first_row != row:
            raise DataValidationError(f"{source}: duplicate id {example['id']!r} in rows {first_row} and {row}")
        yield example
    if dropped:
        _warn_dropped(source, dropped, total)


def _location(row: int, line: int | None, example_id: str | None) -> str:
    details = [f"line {line}"] if line is not None else []
    details += [f"id {example_id!r}"] if example_id is not None else []
    return f"row {row} ({', '.join(details)})" if details else f"row {row}"


def _warn_dropped(source: str, dropped: dict[str, list[int]], total: int) -> None:
    count = sum(len(rows) for rows in dropped.values())
    reasons = "; ".join(f"{reason}: {len(rows)} (rows {_row_list(rows)})" for reason, rows in dropped.items())
    logger.warning("%s: dropped %d of %d rows as invalid: %s", source, count, total, reasons)


def _row_list(rows: list[int]) -> str:
    listed = ", ".join(map(str, rows[:_LISTED_ROWS]))
    return listed + (", ..." if len(rows) > _LISTED_ROWS else "")
