"""Pool sources: load an unlabelled pool as one ``datasets.Dataset``.

Every source returns the same string columns, in this order: ``id``, ``task``,
``system``, ``prompt``, ``response`` (``system`` is ``""`` when there is none).
Sources are configured from YAML as ``class_path``/``init_args``, so their
``__init__`` docstrings double as CLI help.

Bad data fails loudly with a :class:`DataValidationError` that names the file
or dataset and the row, because a silently skipped or mangled example skews
every acquisition round after it. ``drop_invalid=True`` opts into dropping
invalid rows with a logged warning instead.

File, hub and FLAN pools are validated as a stream, ``_CHUNK_ROWS`` rows at a time, into an Arrow
file on disk (``<cache_dir>/pool-<hash>.arrow``) that the returned dataset memory-maps: a pool of
millions of rows is never held in Python, and the processes that tokenize it read it from that file
instead of inheriting (or being sent) a copy.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import inspect
import itertools
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError
from datasets.table import MemoryMappedTable

from lightning_al.data.synthetic import generate_examples

logger = logging.getLogger(__name__)

POOL_COLUMNS = ("id", "task", "system", "prompt", "response")
FIELD_NAMES = (*POOL_COLUMNS, "messages")
POOL_FEATURES = datasets.Features({column: datasets.Value("string") for column in POOL_COLUMNS})

Example = dict[str, str]

_EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
_FORMATS = ("jsonl", "json", "parquet", "csv", "tsv")
_CONVERSATION_FIELDS = ("system", "prompt", "response")
_LISTED_ROWS = 5
#: Rows converted, held in Python and written to the pool's Arrow file at a time (datasets' own writer batch size).
_CHUNK_ROWS = 1000


class DataValidationError(ValueError):
    """A pool source is missing, malformed, misconfigured or holds an invalid row."""


class InvalidRow(Exception):
    """A row that cannot become an example: a line that does not parse (``read_file`` returns it in the
    row's place), or a record with a missing or bad field (raised while converting it)."""

    def __init__(self, reason: str, example_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.example_id = example_id


class PoolSource(abc.ABC):
    """A source of unlabelled pool examples."""

    @abc.abstractmethod
    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        """Load the pool with the columns ``id, task, system, prompt, response`` (all strings).

        Args:
            cache_dir: Folder of the validated pool's Arrow file, for sources that write one
                (default: ``$HF_DATASETS_CACHE/lightning_al/pools``).
        """

    def describe(self) -> str:
        """Short name for logs and cache keys; it changes whenever an init arg changes.

        Subclasses store every init arg under its own name, so the repr of the
        signature's arguments covers them all.
        """
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({args})"


class SyntheticTasks(PoolSource):
    """Seeded synthetic tasks with exact answers, for offline demos and tests."""

    def __init__(
        self,
        num_examples: int = 2000,
        tasks: list[str] = ["copy", "reverse", "sort", "add", "count"],  # noqa: B006 - copied below; CLI shows it
        seed: int = 0,
        min_length: int = 3,
        max_length: int = 12,
    ) -> None:
        """Configure the generator.

        Args:
            num_examples: Number of examples in the pool; tasks are assigned round-robin.
            tasks: Task names, any of copy, reverse, sort, add, count, upper, first, last, length, next,
                after, position, max_digit, min_digit, add_digits.
            seed: Seed of the generator; the same seed always gives the same pool.
            min_length: Shortest input (letters, or total digits for ``add``); longer is harder.
            max_length: Longest input; lengths are drawn uniformly from ``[min_length, max_length]``.
        """
        self.num_examples = num_examples
        self.tasks = list(tasks)
        self.seed = seed
        self.min_length = min_length
        self.max_length = max_length

    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        # Generated in memory (and small): no file to write, cache_dir is not used.
        examples = generate_examples(self.num_examples, self.tasks, self.seed, self.min_length, self.max_length)
        return datasets.Dataset.from_dict(
            {column: [example[column] for example in examples] for column in POOL_COLUMNS}, features=POOL_FEATURES
        )


class LocalFile(PoolSource):
    """A pool stored in one local jsonl, json, parquet, csv or tsv file."""

    def __init__(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        format: str | None = None,  # (shadows a builtin: the YAML key users expect)
        task: str | None = None,
        drop_invalid: bool = False,
    ) -> None:
        """Configure the file source.

        Args:
            path: Path of the file.
            fields: Maps pool field names (``id``, ``task``, ``system``, ``prompt``,
                ``response``, ``messages``) to column names of the file, e.g.
                ``{prompt: question, response: answer}``. A field whose name is
                already a column needs no entry. Either ``prompt`` and ``response``
                or ``messages`` (a chat list of ``{role, content}``: optional system
                turns, one user turn, a final assistant turn) must be available.
                Without an ``id`` column ids are ``<task>-<row>``.
            format: One of jsonl, json, parquet, csv, tsv; inferred from the file
                extension when not given.
            task: Task name for every row when ``fields`` has no ``task`` column;
                defaults to the file name without extension.
            drop_invalid: Drop rows with a missing, empty or undecodable prompt or
                response (logging how many and why) instead of raising an error.
        """
        self.path = path
        self.fields = fields
        self.format = format
        self.task = task
        self.drop_invalid = drop_invalid

    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        path = Path(self.path)
        if not path.is_file():
            raise DataValidationError(f"{path}: file not found (LocalFile.path)")
        file = read_file(path, self.format)
        examples = _examples_of_records(
            file.records,
            file.columns,
            source=str(path),
            fields=self.fields,
            default_task=self.task or path.stem,
            drop_invalid=self.drop_invalid,
            line_of=file.line_of,
        )
        return _write_pool(examples, cache_dir)


class HubDataset(PoolSource):
    """A pool from a Hugging Face Hub dataset, or a local dataset folder laid out like one.

    Tulu's FLAN v2 mix stores chats in ``messages`` and the original FLAN task in
    ``_task_name``, so it is configured as::

        class_path: lightning_al.data.sources.HubDataset
        init_args:
          name: ai2-adapt-dev/flan_v2_converted
          fields: {task: _task_name}
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        subset: str | None = None,
        revision: str | None = None,
        fields: dict[str, str] | None = None,
        task: str | None = None,
        drop_invalid: bool = False,
    ) -> None:
        """Configure the hub source.

        Args:
            name: Hub dataset id such as ``ai2-adapt-dev/flan_v2_converted``, or a
                local folder of data files.
            split: Split to load.
            subset: Dataset configuration (subset) name, if the dataset has several.
            revision: Git revision (branch, tag or commit) to pin for reproducibility.
            fields: Maps pool field names (``id``, ``task``, ``system``, ``prompt``,
                ``response``, ``messages``) to column names of the dataset. A field
                whose name is already a column needs no entry. Either ``prompt`` and
                ``response`` or ``messages`` (a chat list of ``{role, content}``:
                optional system turns, one user turn, a final assistant turn) must
                be available. For ``ai2-adapt-dev/flan_v2_converted`` map
                ``task: _task_name`` to keep the original FLAN task names.
            task: Task name for every row when ``fields`` has no ``task`` column;
                defaults to the last path component of ``name``.
            drop_invalid: Drop rows with a missing, empty or undecodable prompt or
                response (logging how many and why) instead of raising an error.
        """
        self.name = name
        self.split = split
        self.subset = subset
        self.revision = revision
        self.fields = fields
        self.task = task
        self.drop_invalid = drop_invalid

    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        table = _load_hub_dataset(self.name, self.subset, self.split, self.revision)
        subset = f"/{self.subset}" if self.subset else ""
        examples = _examples_of_records(
            _table_records(table),
            table.column_names,
            source=f"{self.name}{subset}[{self.split}]",
            fields=self.fields,
            default_task=self.task or self.name.rstrip("/").rsplit("/", 1)[-1],
            drop_invalid=self.drop_invalid,
            line_of=None,
        )
        return _write_pool(examples, cache_dir)


#: The canonical copy of the FLAN v2 chain-of-thought files: google-research/FLAN on GitHub.
FLAN_COT_URL = "https://raw.githubusercontent.com/google-research/FLAN/main/flan/v2/cot_data"
#: Its tasks (``<task>_train.tsv``).
FLAN_COT_TASKS = ("aqua", "creak", "ecqa", "esnli", "gsm8k", "qasc", "qed", "sensemaking", "strategyqa")


class FlanCoT(PoolSource):
    """FLAN v2 chain-of-thought TSV files (``<task>_train.tsv``: question, answer, rationale; no header).

    The response is ``"<rationale> So the answer is <answer>."``, the format FLAN
    uses to train chain-of-thought; ids are ``<task>-<row>``. The files come from a local folder or
    from a URL (by default GitHub's google-research/FLAN ``flan/v2/cot_data``), downloaded once into
    the datasets cache.
    """

    def __init__(self, path: str = FLAN_COT_URL, tasks: list[str] | None = None, drop_invalid: bool = False) -> None:
        """Configure the FLAN CoT source.

        Args:
            path: A folder of ``<task>_train.tsv`` files, one such file, or an http(s) URL of a folder
                (default: google-research/FLAN on GitHub). Downloads are cached in
                ``$HF_DATASETS_CACHE/lightning_al/downloads``; with ``HF_DATASETS_OFFLINE=1`` only
                that cache is read.
            tasks: Tasks to load (file names without ``_train.tsv``); all when not given (for a
                URL: aqua, creak, ecqa, esnli, gsm8k, qasc, qed, sensemaking, strategyqa).
            drop_invalid: Drop malformed or empty rows (logging how many and why)
                instead of raising an error.
        """
        self.path = path
        self.tasks = tasks
        self.drop_invalid = drop_invalid

    def load(self, cache_dir: str | Path | None = None) -> datasets.Dataset:
        return _write_pool(self._examples(self._task_files()), cache_dir)

    def _examples(self, files: dict[str, Path]) -> Iterator[Example]:
        for task, file in files.items():
            with file.open("rb") as handle:
                yield from _assemble(
                    str(file), enumerate(handle), partial(_flan_example, task), self.drop_invalid, _next_line
                )

    def _task_files(self) -> dict[str, Path]:
        if self.path.startswith(("http://", "https://")):
            base = self.path.rstrip("/")
            return {task: download(f"{base}/{task}_train.tsv") for task in self.tasks or FLAN_COT_TASKS}
        root = Path(self.path)
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(root.glob("*_train.tsv"))
        else:
            raise DataValidationError(f"{root}: not found (FlanCoT.path)")
        if not files:
            raise DataValidationError(f"{root}: no *_train.tsv files (FlanCoT.path)")
        by_task = {_flan_task(file): file for file in files}
        if self.tasks is None:
            return by_task
        unknown = [task for task in self.tasks if task not in by_task]
        if unknown:
            raise DataValidationError(f"{root}: tasks {unknown} not found; available tasks: {sorted(by_task)}")
        return {task: by_task[task] for task in self.tasks}


def download(url: str) -> Path:
    """A local copy of ``url``, downloaded once into the datasets cache (offline: only the cache).

    One attempt, no retries: a wrong URL or a machine without network fails at once, naming the URL.
    """
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "lightning_al" / "downloads"
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rstrip('/').rsplit('/', 1)[-1]}"
    if target.is_file():
        return target
    if _datasets_offline():
        raise DataValidationError(
            f"{url}: not in the download cache ({folder}) and HF_DATASETS_OFFLINE=1 forbids downloading it; "
            "run once where the network is reachable (same HF_HOME), or use a local copy"
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial_file = target.with_suffix(target.suffix + ".incomplete")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial_file.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors
        partial_file.unlink(missing_ok=True)
        raise DataValidationError(f"{url}: cannot be downloaded ({err}); check the URL or use a local copy") from None
    partial_file.replace(target)
    return target


def _datasets_offline() -> bool:
    # The environment too: datasets reads it once, at import.
    flags = (os.environ.get(name, "").strip().upper() for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return datasets.config.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _flan_task(file: Path) -> str:
    return file.stem.removesuffix("_train")


def _flan_example(task: str, row: int, raw_line: bytes) -> Example:
    line = _decode(raw_line.rstrip(b"\r\n"), "line")
    parts = line.split("\t")
    if len(parts) != 3:
        raise InvalidRow(f"expected 3 tab-separated fields (question, answer, rationale), found {len(parts)}")
    # FLAN stores newlines inside a field as the two characters backslash and n.
    question, answer, rationale = (
        _required_text(part.replace("\\n", "\n").strip(), name)
        for part, name in zip(parts, ("question", "answer", "rationale"))
    )
    return {
        "id": f"{task}-{row}",
        "task": task,
        "system": "",
        "prompt": question,
        "response": f"{rationale} So the answer is {answer}.",
    }


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
        return FileRecords(fmt, table.column_names, _table_records(table), None)
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


def _load_hub_dataset(name: str, subset: str | None, split: str, revision: str | None) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, subset, split=split, revision=revision)
    except (FileNotFoundError, ConnectionError, DatasetNotFoundError) as err:
        offline = " (HF_DATASETS_OFFLINE=1: only the local cache is read)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataValidationError(
            f"{name}: not a local folder and not a hub dataset that can be loaded{offline}: {err}"
        ) from None


def _next_line(row: int) -> int:
    return row + 1


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


def _table_records(table: datasets.Dataset) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, record) of an Arrow-backed table, read ``_CHUNK_ROWS`` rows at a time, one column at a time."""
    columns = {name: table.select_columns([name]) for name in table.column_names}
    for start in range(0, len(table), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(table))
        chunk = {name: _column_values(column, name, start, stop) for name, column in columns.items()}
        for offset, values in enumerate(zip(*chunk.values())):
            yield start + offset, dict(zip(chunk, values))


def _column_values(column: datasets.Dataset, name: str, start: int, stop: int) -> list[Any]:
    try:
        return column[start:stop][name]
    except UnicodeDecodeError:
        # Arrow does not validate UTF-8 when reading parquet; raw bytes let the row checks name each bad row.
        return column.data.column(name).slice(start, stop - start).cast(pa.large_binary()).to_pylist()


def _examples_of_records(
    records: Iterable[tuple[int, Any]],
    columns: list[str],
    source: str,
    fields: dict[str, str] | None,
    default_task: str,
    drop_invalid: bool,
    line_of: Callable[[int], int] | None,
) -> Iterator[Example]:
    mapping = _resolve_fields(fields, columns, source)  # (at once: a bad mapping fails before any row is read)
    return _assemble(
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
    task = _required_text(record["task"], "task") if "task" in mapping else default_task
    example_id = _example_id(record["id"]) if "id" in mapping else f"{task}-{row}"
    try:
        if "messages" in mapping:
            system, prompt, response = _split_messages(record["messages"])
        else:
            system = _optional_text(record["system"], "system") if "system" in mapping else ""
            prompt = _required_text(record["prompt"], "prompt")
            response = _required_text(record["response"], "response")
    except InvalidRow as err:
        raise InvalidRow(err.reason, example_id) from None
    return {"id": example_id, "task": task, "system": system, "prompt": prompt, "response": response}


def _example_id(value: Any) -> str:
    text = _decode(value, "id") if isinstance(value, bytes) else str(value if value is not None else "")
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
    return system, _required_text(contents[-2], "user message"), _required_text(contents[-1], "assistant message")


def _decode(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRow(f"{what} is not valid UTF-8") from None


def _optional_text(value: Any, what: str) -> str:
    """Validate a text value that may be absent (None becomes "")."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = _decode(value, what)
    if not isinstance(value, str):
        raise InvalidRow(f"{what} is not a string but {type(value).__name__}")
    if "\ufffd" in value:
        raise InvalidRow(f"{what} contains U+FFFD, the mark of undecodable text")
    return value


def _required_text(value: Any, what: str) -> str:
    if value is None:
        raise InvalidRow(f"{what} is missing")
    text = _optional_text(value, what)
    if not text.strip():
        raise InvalidRow(f"{what} is empty")
    return text


def _assemble(
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


def _write_pool(examples: Iterable[Example], cache_dir: str | Path | None) -> datasets.Dataset:
    """The examples written to an Arrow file ``_CHUNK_ROWS`` at a time (as ``datasets`` writes its own
    caches), as a dataset that memory-maps it.

    The file is named after its contents: the same pool read again finds its name taken by identical
    bytes instead of filling the cache, and a process never maps a file another one is still writing
    (each writes a temporary file of its own, renamed once complete).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_pool_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, prefix="pool-", suffix=".arrow.incomplete")
    os.close(handle)
    partial_file = Path(name)
    try:
        with ArrowWriter(features=POOL_FEATURES, path=name) as writer:
            for chunk in _chunks(examples, _CHUNK_ROWS):
                writer.write_batch({column: [example[column] for example in chunk] for column in POOL_COLUMNS})
            writer.finalize()
        digest = _file_sha256(partial_file)[:16]
        target = folder / f"pool-{digest}.arrow"
        if not target.exists():  # (if it does, it holds these bytes, maybe mapped by another run: kept)
            partial_file.replace(target)
    finally:
        partial_file.unlink(missing_ok=True)  # (a duplicate, or a failure left it incomplete)
    # Fingerprinted by its contents (Dataset.from_file draws a random one), so that datasets' caches of its
    # transforms, such as the max_pool_size subset, are found again by the next run instead of written anew.
    return datasets.Dataset(MemoryMappedTable.from_file(str(target)), fingerprint=digest)


def default_pool_dir() -> Path:
    """Where pools' Arrow files go when no ``cache_dir`` is given: beside ``datasets``' own caches."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "lightning_al" / "pools"


def _chunks(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
