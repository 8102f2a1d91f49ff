"""Pool set-up memory: hashing a memory-mapped pool (the tokenized cache's key) and reading the truncation
check's sample of it read its file instead of leaving mapped pages resident, with the same results as
through the mapping."""

import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable, MemoryMappedTable

from lightning_al.data.tokenized_pool import _rows, table_digest

FEATURES = datasets.Features({"id": datasets.Value("string"), "prompt": datasets.Value("string"),
                              "n": datasets.Value("int64"), "ids": datasets.Sequence(datasets.Value("int32"))})


def _write(path: Path, rows: int, text_bytes: int) -> None:
    with ArrowWriter(features=FEATURES, path=str(path), writer_batch_size=1000) as writer:
        for start in range(0, rows, 1000):
            stop = min(start + 1000, rows)
            writer.write_batch({"id": [f"ex-{i}" for i in range(start, stop)],
                                "prompt": [f"{i:08d}".ljust(text_bytes, "x") for i in range(start, stop)],
                                "n": list(range(start, stop)),
                                "ids": [[i, i + 1, i + 2][: i % 4] for i in range(start, stop)]})
        writer.finalize()


def test_a_mapped_table_hashes_as_the_same_table_in_memory(tmp_path: Path) -> None:
    _write(tmp_path / "pool.arrow", 2500, 50)
    # (datasets.Dataset rewrites the schema's metadata: a replay that leaves the buffers, and the file, as they are)
    mapped = datasets.Dataset(MemoryMappedTable.from_file(str(tmp_path / "pool.arrow"))).data
    in_memory = InMemoryTable(pa.Table.from_batches(mapped.table.to_batches()))
    assert table_digest(mapped) == table_digest(in_memory)
    # The key depends on the contents: one value changed, another digest.
    changed = in_memory.table.set_column(2, "n", pa.chunked_array([pa.array(range(1, 2501), pa.int64())]))
    assert table_digest(InMemoryTable(changed)) != table_digest(in_memory)
    # A mapped table with operations replayed on top of its file (here: a column dropped) is not its file.
    dropped = mapped.drop(["n"])
    assert table_digest(dropped) == table_digest(InMemoryTable(dropped.table))


def test_sample_rows_read_from_the_file_are_those_of_the_mapped_dataset(tmp_path: Path) -> None:
    _write(tmp_path / "pool.arrow", 2500, 50)
    dataset = datasets.Dataset(MemoryMappedTable.from_file(str(tmp_path / "pool.arrow")))
    rows = np.array([0, 1, 999, 1000, 1001, 2499])
    assert _rows(dataset, rows) == dataset.select(rows)[:]
    subset = dataset.select([5, 3, 1])  # (an indices mapping: read through it)
    assert _rows(subset, np.array([0, 2])) == {key: [values[5], values[1]] for key, values in dataset[:6].items()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssFile from /proc/self/status")
def test_hashing_a_mapped_pool_leaves_its_pages_unmapped(tmp_path: Path) -> None:
    path = tmp_path / "pool.arrow"
    _write(path, 12_000, 4000)  # ~48 MiB
    size_mib = path.stat().st_size / 2**20
    dataset = datasets.Dataset(MemoryMappedTable.from_file(str(path)))
    before = _rss_file_mib()
    table_digest(dataset.data)
    _rows(dataset, np.sort(np.random.default_rng(0).choice(len(dataset), 256, replace=False)))
    grown = _rss_file_mib() - before
    assert grown < size_mib / 4, f"hashing and sampling a {size_mib:.0f} MiB pool mapped {grown:.0f} MiB of it"


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")
