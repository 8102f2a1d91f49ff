"""A pool's validated examples written to an Arrow file named by its contents, and memory-mapped from there.

File, hub and FLAN pools are written as a stream, ``CHUNK_ROWS`` rows at a time, to
``<cache_dir>/pool-<hash>.arrow``, which the returned dataset memory-maps: a pool of millions of rows is
never held in Python, and the processes that tokenize it read it from that file instead of inheriting (or
being sent) a copy.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import datasets
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable

POOL_COLUMNS = ("id", "task", "system", "prompt", "response")
POOL_FEATURES = datasets.Features({column: datasets.Value("string") for column in POOL_COLUMNS})

Example = dict[str, str]

#: Rows converted, held in Python and written to the pool's Arrow file at a time (datasets' own writer batch size).
CHUNK_ROWS = 1000


def write_pool(examples: Iterable[Example], cache_dir: str | Path | None) -> datasets.Dataset:
    """The examples written to an Arrow file ``CHUNK_ROWS`` at a time (as ``datasets`` writes its own
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
            for chunk in _chunks(examples, CHUNK_ROWS):
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
