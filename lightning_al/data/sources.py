"""Pool sources: load an unlabelled pool as one ``datasets.Dataset``.

Every source returns the same string columns, in this order: ``id``, ``task``,
``system``, ``prompt``, ``response`` (``system`` is ``""`` when there is none).
Sources are configured from YAML as ``class_path``/``init_args``, so their
``__init__`` docstrings double as CLI help.

Bad data fails loudly with a :class:`DataValidationError` that names the file
or dataset and the row, because a silently skipped or mangled example skews
every acquisition round after it. ``drop_invalid=True`` opts into dropping
invalid rows with a logged warning instead.

File, hub and FLAN pools are validated as a stream, ``CHUNK_ROWS`` rows at a time, into an Arrow
file on disk (``<cache_dir>/pool-<hash>.arrow``) that the returned dataset memory-maps: a pool of
millions of rows is never held in Python, and the processes that tokenize it read it from that file
instead of inheriting (or being sent) a copy.

The sources are here; what they share is beside them: ``files`` reads a local file's records (with
their lines), ``examples`` validates records into examples, ``pool_file`` writes and maps the pool's
Arrow file. Their public names are importable from here too, as before.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import os
import shutil
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import datasets
from datasets.exceptions import DatasetNotFoundError

from lightning_al.data.examples import FIELD_NAMES, assemble, decode, examples_of_records, required_text
from lightning_al.data.files import DataValidationError, FileRecords, InvalidRow, read_file, table_records
from lightning_al.data.pool_file import POOL_COLUMNS, POOL_FEATURES, Example, default_pool_dir, write_pool
from lightning_al.data.synthetic import generate_examples

__all__ = [  # (the sources, and the names other modules and users import from here)
    "FIELD_NAMES", "FLAN_COT_TASKS", "FLAN_COT_URL", "POOL_COLUMNS", "POOL_FEATURES", "DataValidationError",
    "Example", "FileRecords", "FlanCoT", "HubDataset", "InvalidRow", "LocalFile", "PoolSource", "SyntheticTasks",
    "default_pool_dir", "download", "read_file",
]


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
        examples = examples_of_records(
            file.records,
            file.columns,
            source=str(path),
            fields=self.fields,
            default_task=self.task or path.stem,
            drop_invalid=self.drop_invalid,
            line_of=file.line_of,
        )
        return write_pool(examples, cache_dir)


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
        examples = examples_of_records(
            table_records(table),
            table.column_names,
            source=f"{self.name}{subset}[{self.split}]",
            fields=self.fields,
            default_task=self.task or self.name.rstrip("/").rsplit("/", 1)[-1],
            drop_invalid=self.drop_invalid,
            line_of=None,
        )
        return write_pool(examples, cache_dir)


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
        return write_pool(self._examples(self._task_files()), cache_dir)

    def _examples(self, files: dict[str, Path]) -> Iterator[Example]:
        for task, file in files.items():
            with file.open("rb") as handle:
                yield from assemble(
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
    line = decode(raw_line.rstrip(b"\r\n"), "line")
    parts = line.split("\t")
    if len(parts) != 3:
        raise InvalidRow(f"expected 3 tab-separated fields (question, answer, rationale), found {len(parts)}")
    # FLAN stores newlines inside a field as the two characters backslash and n.
    question, answer, rationale = (
        required_text(part.replace("\\n", "\n").strip(), name)
        for part, name in zip(parts, ("question", "answer", "rationale"))
    )
    return {
        "id": f"{task}-{row}",
        "task": task,
        "system": "",
        "prompt": question,
        "response": f"{rationale} So the answer is {answer}.",
    }


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
