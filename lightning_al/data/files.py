"""Local files read as records: jsonl, json, parquet, csv and tsv, lazily and with the line of each row.

Pools (``LocalFile``, in ``lightning_al.data.sources``) and multiple-choice evaluation files are read by
``read_file``. Text formats are parsed here line by line, so that a malformed line is reported with its
number (and can be dropped) instead of a parser's "position 46" for the whole file.
"""

from __future__ import annotations

import csv
import itertools
import json
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
from datasets.exceptions import DatasetGenerationError

from lightning_al.data.pool_file import CHUNK_ROWS

_EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
_FORMATS = ("jsonl", "json", "parquet", "csv", "tsv")


class DataValidationError(ValueError):
    """A pool source is missing, malformed, misconfigured or holds an invalid row."""


class InvalidRow(Exception):
    """A row that cannot become an example: a line that does not parse (``read_file`` returns it in the
    row's place), or a record with a missing or bad field (raised while converting it)."""

    def __init__(self, reason: str, example_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.example_id = example_id


class FileRecords(NamedTuple):
    """A local file's records, as ``read_file`` reads them.

    Attributes:
        format: jsonl, json, parquet, csv or tsv.
        columns: Every column (key) of any record, in order of first appearance.
        records: ``(row, record)`` pairs, ``row`` counting from 0, read lazily (once); a record that does not
            parse is an ``InvalidRow`` saying why.
        line_of: The line of a row in the file, once the row has been read (None for parquet and JSON
            arrays, which have no row lines).
    """

    format: str
    columns: list[str]
    records: Iterable[tuple[int, dict[str, Any] | InvalidRow]]
    line_of: Callable[[int], int] | None


def read_file(path: Path, fmt: str | None = None) -> FileRecords:
    """The records of a local jsonl, json, parquet, csv or tsv file (``fmt``, or from the extension).

    Text formats are parsed here, line by line, so that a malformed line is reported with its number
    (and can be dropped) instead of a parser's "position 46" for the whole file; csv / tsv values stay
    text. The records are read as they are iterated, never all held at once (except a JSON array's,
    which has no lines to read one by one). Pools (``LocalFile``) and multiple-choice evaluation files
    are read by this one function.

    Raises:
        DataValidationError: an unknown format, a file that is not UTF-8 text or not parquet.
    """
    fmt = _file_format(path, fmt)
    if fmt == "parquet":
        table = _load_parquet(path)
        return FileRecords(fmt, table.column_names, table_records(table), None)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, fmt)
    if fmt == "json" and _starts_a_json_array(path):
        return _read_json_array(path)
    # JSON lines (Dataset.to_json writes them even to a .json file).
    return _read_json_lines(path, fmt)


def _file_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        inferred = _EXTENSION_FORMATS.get(path.suffix.lower())
        if inferred is None:
            raise DataValidationError(
                f"{path}: cannot infer the format from extension {path.suffix!r}; "
                f"set `format` to one of {list(_FORMATS)}"
            )
        return inferred
    if fmt not in _FORMATS:
        raise DataValidationError(f"{path}: unknown `format` {fmt!r}; valid formats are {list(_FORMATS)}")
    return fmt


def _load_parquet(path: Path) -> datasets.Dataset:
    try:
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    except DatasetGenerationError as err:
        raise DataValidationError(f"{path}: cannot be read as parquet: {_root_cause(err)}") from err


def _read_json_lines(path: Path, fmt: str) -> FileRecords:
    """A JSON lines file, parsed twice, one line at a time: a first pass finds every key of any line (the
    columns that fields map to), the records' pass converts. Blank lines are skipped."""
    columns = dict.fromkeys(key for _, record in _json_lines(path) if isinstance(record, dict) for key in record)
    lines = array("q")

    def records() -> Iterator[tuple[int, dict[str, Any] | InvalidRow]]:
        for row, (line, record) in enumerate(_json_lines(path)):
            lines.append(line)
            yield row, record

    return FileRecords(fmt, list(columns), records(), lines.__getitem__)


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | InvalidRow]]:
    """(line number, record) of each non-blank line; a line that does not parse is an InvalidRow."""
    # Lines end at "\n" only: str.splitlines would also split at U+0085 / U+2028, which JSON strings may hold.
    for line, text in enumerate(_utf8_lines(path, newline="\n"), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            record = InvalidRow(f"not valid JSON ({err.msg} at column {err.colno})")
        if not isinstance(record, (dict, InvalidRow)):
            record = InvalidRow(f"not a JSON object but {type(record).__name__}")
        yield line, record


def _starts_a_json_array(path: Path) -> bool:
    first = next((text for text in _utf8_lines(path, newline="\n") if text.strip()), "")
    return first.lstrip().startswith("[")


def _read_json_array(path: Path) -> FileRecords:
    """A JSON array, parsed whole (its format has no lines to stream; JSON lines suit large pools)."""
    try:
        records = json.loads(_read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{path}: line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}") from None
    records = [r if isinstance(r, dict) else InvalidRow(f"not a JSON object but {type(r).__name__}") for r in records]
    columns = dict.fromkeys(key for record in records if isinstance(record, dict) for key in record)
    return FileRecords("json", list(columns), enumerate(records), None)


def _read_delimited(path: Path, fmt: str) -> FileRecords:
    """A csv / tsv file with a header line, read one record at a time (a quoted field may span lines).

    All values stay text: type inference would turn "007" into 7 and "NA" into None.
    """
    delimiter = "\t" if fmt == "tsv" else ","
    header = next(_csv_rows(path, delimiter), (0, None))[1]
    if not header:
        raise DataValidationError(f"{path}: empty file, expected a header line")
    lines = array("q")

    def records() -> Iterator[tuple[int, dict[str, str] | InvalidRow]]:
        for row, (line, values) in enumerate(itertools.islice(_csv_rows(path, delimiter), 1, None)):
            lines.append(line)
            yield row, (
                dict(zip(header, values))
                if len(values) == len(header)
                else InvalidRow(f"expected {len(header)} fields (the header's), found {len(values)}")
            )

    return FileRecords(fmt, header, records(), lines.__getitem__)


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, values) of each non-blank csv record, the header included."""
    reader = csv.reader(_utf8_lines(path, newline=""), delimiter=delimiter)
    start = 1
    try:
        for values in reader:
            if values:  # blank lines are skipped
                yield start, values
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataValidationError(f"{path}: line {reader.line_num}: {err}") from None


def _utf8_lines(path: Path, newline: str) -> Iterator[str]:
    """The lines of a UTF-8 file (a leading BOM dropped), read lazily; a byte that is not UTF-8 fails
    naming its line. ``newline`` as for ``open``: "\n" splits there only, "" also at "\r" (csv)."""
    try:
        with path.open(encoding="utf-8-sig", newline=newline) as handle:
            yield from handle
    except UnicodeDecodeError:
        # The decoder reads ahead in blocks, so its error does not say which line; find it.
        raise DataValidationError(f"{path}: line {_first_non_utf8_line(path)} is not valid UTF-8") from None


def _first_non_utf8_line(path: Path) -> int:
    # A UTF-8 sequence never holds the byte "\n", so decoding line by line finds the exact line.
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    raise AssertionError(f"{path}: a decoding error in a file whose every line is UTF-8")


def _read_utf8(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 fails with the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataValidationError(f"{path}: line {line} is not valid UTF-8") from None


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def table_records(table: datasets.Dataset) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, record) of an Arrow-backed table, read ``CHUNK_ROWS`` rows at a time, one column at a time."""
    columns = {name: table.select_columns([name]) for name in table.column_names}
    for start in range(0, len(table), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(table))
        chunk = {name: _column_values(column, name, start, stop) for name, column in columns.items()}
        for offset, values in enumerate(zip(*chunk.values())):
            yield start + offset, dict(zip(chunk, values))


def _column_values(column: datasets.Dataset, name: str, start: int, stop: int) -> list[Any]:
    try:
        return column[start:stop][name]
    except UnicodeDecodeError:
        # Arrow does not validate UTF-8 when reading parquet; raw bytes let the row checks name each bad row.
        return column.data.column(name).slice(start, stop - start).cast(pa.large_binary()).to_pylist()
