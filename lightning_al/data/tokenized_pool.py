"""The pool tokenized once: a cache keyed on the pool's contents, the tokenizer and the lengths (so it is
reused across runs and never stale), and a check that fails before training, in seconds when it can, when
a max_length set for another dataset would cut most of the pool."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import MemoryMappedTable, Table
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from lightning_al.data.formatting import reads_the_clock, tokenize_batch

_FORMAT_VERSION = "6"  # bump when tokenize_example changes, to invalidate old caches
_TRUNCATION_SAMPLE = 256  # examples tokenized up front to catch a max_length far too short
_SAMPLE_BATCH = 32  # of them tokenized at a time (their token offsets as Python tuples: ~2 MiB per 1,000 tokens)


@dataclass(frozen=True)
class PoolTokenization:
    """How a pool is tokenized (the ``data.*`` settings of the same names).

    Attributes:
        tokenizer: The tokenizer; ``tokenizer_name`` (its hub id, folder or ``char``) is part of the cache key.
        max_length: Maximum tokens of prompt + response; longer examples are truncated.
        max_prompt_length: Maximum prompt tokens.
        max_truncated_fraction: Fail when more than this fraction of the pool would be truncated.
        cache_dir: Folder of ``tokenized-<hash>.arrow``.
        num_proc: Tokenizing processes (None: one per 10,000 examples, at most one per CPU core).
    """

    tokenizer: PreTrainedTokenizerBase
    tokenizer_name: str
    max_length: int
    max_prompt_length: int
    max_truncated_fraction: float
    cache_dir: Path
    num_proc: int | None = None

    def __call__(self, raw: datasets.Dataset, sample_seed: int, source: str) -> datasets.Dataset:
        """``raw`` (columns id, task, system, prompt, response) tokenized, from the cache when it is there.
        ``sample_seed`` draws the truncation check's sample; ``source`` names the pool in errors."""
        kwargs = {"tokenizer": self.tokenizer, "max_length": self.max_length,
                  "max_prompt_length": self.max_prompt_length}
        if reads_the_clock(self.tokenizer):
            rank_zero_warn(f"{self.tokenizer_name}: its chat template writes today's date (strftime_now) with no "
                           "date_string to fix it, so prompts tokenized on different days differ")
        # Keyed on the pool's contents (not its path), so an edited file is tokenized again.
        key = "|".join(
            [_FORMAT_VERSION, table_digest(raw.data), self.tokenizer_name, str(len(self.tokenizer)),
             str(self.tokenizer.chat_template), str(self.max_length), str(self.max_prompt_length)]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        if not any(self.cache_dir.glob(f"tokenized-{digest}*.arrow")):  # (with num_proc: one file per process)
            self._check_truncation_sample(raw, kwargs, sample_seed, source)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tokenized = raw.map(
            tokenize_batch,
            batched=True,
            fn_kwargs=kwargs,
            # The response stays for held-out answer matching; unlabeled ones are never served.
            remove_columns=["system", "prompt"],
            num_proc=self._num_proc(len(raw)),
            cache_file_name=str(self.cache_dir / f"tokenized-{digest}.arrow"),
            load_from_cache_file=True,
            desc="Tokenizing the pool",
        )
        fraction = float(np.mean(tokenized.data.column("truncated").to_numpy())) if len(tokenized) else 0.0
        if fraction > self.max_truncated_fraction:
            raise ValueError(self._truncation_message(fraction, len(tokenized), "", source))
        return tokenized

    def _num_proc(self, rows: int) -> int | None:
        if self.num_proc is not None:
            return self.num_proc if self.num_proc > 1 else None
        # Worker start-up costs about a second: worth it only for large pools.
        procs = min(os.cpu_count() or 1, rows // 10_000)
        return procs if procs > 1 else None

    def _check_truncation_sample(self, raw: datasets.Dataset, kwargs: dict, seed: int, source: str) -> None:
        """Fail in seconds, before a long tokenization, when a sample says most of the pool would be cut."""
        if self.max_truncated_fraction >= 1.0 or len(raw) == 0:
            return
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(raw), min(_TRUNCATION_SAMPLE, len(raw)), replace=False))
        # Untruncated lengths, so that the message can say what max_length would fit.
        examples, measured = _rows(raw, sample), {"prompt_length": [], "response_length": []}
        for start in range(0, len(sample), _SAMPLE_BATCH):
            batch = {key: values[start : start + _SAMPLE_BATCH] for key, values in examples.items()}
            rows = tokenize_batch(batch, **{**kwargs, "max_length": 2**62, "max_prompt_length": 2**61})
            for key, values in measured.items():
                values += rows[key]
        prompt = np.asarray(measured["prompt_length"])
        total = prompt + np.asarray(measured["response_length"])
        fraction = float(np.mean((prompt > self.max_prompt_length) | (total > self.max_length)))
        if fraction > self.max_truncated_fraction:
            where = f" (from a seeded sample of {len(sample)})" if len(sample) < len(raw) else ""
            lengths = (f" Prompt tokens: median {np.median(prompt):.0f}, 90th percentile {np.percentile(prompt, 90):.0f};"
                       f" prompt + response: median {np.median(total):.0f}, 90th percentile {np.percentile(total, 90):.0f}.")
            raise ValueError(self._truncation_message(fraction, len(raw), where, source) + lengths)

    def _truncation_message(self, fraction: float, n: int, where: str, source: str) -> str:
        return (
            f"data.max_length={self.max_length} / data.max_prompt_length={self.max_prompt_length}: "
            f"{100 * fraction:.0f}% of the pool's {n} examples{where} would be truncated, more than "
            f"data.max_truncated_fraction={self.max_truncated_fraction} ({source}). "
            f"Raise data.max_length (and data.max_prompt_length), or data.max_truncated_fraction to accept it."
        )


def table_digest(table: Table) -> str:
    """The sha256 of a table's Arrow buffers, column after column, chunk after chunk (the pool's part of
    the cache key).

    A memory-mapped table (a file, hub or FLAN pool, or its max_pool_size subset) is hashed from its
    file, read one record batch at a time, once per column: the same buffers, hence the same digest,
    as hashing the table; hashing it through its mapping instead would leave every page of the file
    resident in this process for as long as the pool is mapped (the set-up's peak RSS grew by the
    pool's size: 340 MiB for 100,000 rows of ~900 tokens).
    """
    digest = hashlib.sha256()
    if _is_its_file(table):
        for column in range(table.num_columns):
            with pa.OSFile(table.path) as file:  # (read, not mapped)
                for batch in pa.ipc.open_stream(file):
                    _hash_buffers(digest, batch.column(column))
    else:
        for column in table.table.columns:
            for chunk in column.chunks:
                _hash_buffers(digest, chunk)
    return digest.hexdigest()


def _rows(dataset: datasets.Dataset, rows: np.ndarray) -> dict[str, list]:
    """The ``rows`` (sorted) of a dataset of string columns, as lists by column (as ``dataset.select(rows)[:]``).

    Those of a memory-mapped pool are read from its file, one record batch at a time: reading a row through
    the mapping maps the 64 KiB around it in every column (the kernel's fault-around) and keeps them
    resident, ~50 MiB for the truncation check's 256 rows.
    """
    if dataset._indices is not None or not _is_its_file(dataset.data):
        return dataset.select(rows)[:]
    taken, start = [], 0
    with pa.OSFile(dataset.data.path) as file:
        for batch in pa.ipc.open_stream(file):
            inside = rows[(rows >= start) & (rows < start + batch.num_rows)] - start
            if len(inside):
                taken.append(batch.take(pa.array(inside)))
            start += batch.num_rows
    return pa.Table.from_batches(taken, schema=dataset.data.schema).to_pydict()


def _is_its_file(table: Table) -> bool:
    """Whether ``table`` holds the buffers of its Arrow file as they are: memory-mapped, and changed since
    only in its schema's metadata (``datasets.Dataset`` rewrites it), not in its columns."""
    if not isinstance(table, MemoryMappedTable) or any(name not in _METADATA_ONLY for name, *_ in table.replays):
        return False
    with pa.OSFile(table.path) as file:
        schema = pa.ipc.open_stream(file).schema
    return schema.remove_metadata().equals(table.schema.remove_metadata())


#: ``datasets.table.Table`` operations that leave every buffer as it was.
_METADATA_ONLY = frozenset({"replace_schema_metadata"})


def _hash_buffers(digest, array: pa.Array) -> None:
    for buffer in array.buffers():
        if buffer is not None:
            digest.update(memoryview(buffer))
