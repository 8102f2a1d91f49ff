import json
import logging
import pickle
import random
import re
import tracemalloc
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.table import MemoryMappedTable

from lightning_al.data.sources import (
    POOL_COLUMNS,
    DataValidationError,
    FlanCoT,
    HubDataset,
    LocalFile,
    SyntheticTasks,
)
from lightning_al.data.synthetic import TASKS, generate_examples

FLAN_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "flan_v2_cot"
needs_flan = pytest.mark.skipif(not FLAN_DIR.is_dir(), reason=f"{FLAN_DIR} not available")

ROWS = [
    {"uid": 10, "question": "What is 2+2?", "answer": "4", "sys": "Be brief."},
    {"uid": 11, "question": "Capital of France?", "answer": "Paris", "sys": ""},
    {"uid": 12, "question": "Say NA", "answer": "NA", "sys": ""},
]
MAPPING = {"id": "uid", "prompt": "question", "response": "answer", "system": "sys"}


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    """Pools' Arrow files (``load()`` without a cache_dir) and datasets' caches go to the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _chat(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- synthetic -------------------------------------------------------------------------------


def _expected_answer(task: str, prompt: str) -> str:
    argument = prompt.split(": ", 1)[1]
    if task == "copy":
        return argument
    if task == "reverse":
        return argument[::-1]
    if task == "sort":
        return "".join(sorted(argument))
    if task == "upper":
        return argument.upper()
    if task == "add":
        a, b = argument.split(" + ")
        return str(int(a) + int(b))
    if task == "first":
        return argument[0]
    if task == "last":
        return argument[-1]
    if task == "length":
        return str(len(argument))
    if task == "next":
        return "abcdefghijklmnopqrstuvwxyza"["abcdefghijklmnopqrstuvwxyz".index(argument) + 1]
    if task == "count":
        letter = re.fullmatch(r"Count the letter (\w) in", prompt.split(": ", 1)[0]).group(1)
        return str(argument.count(letter))
    if task == "after":
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZA"["ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(argument) + 1]
    if task == "position":
        return str("ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(argument) + 1)
    if task in ("max_digit", "min_digit"):
        assert argument.isdigit()
        return max(argument) if task == "max_digit" else min(argument)
    if task == "add_digits":
        a, b = argument.split(" + ")
        assert len(a) == len(b) == 1
        return str(int(a) + int(b))
    raise AssertionError(f"untested task {task}")


def test_synthetic_is_deterministic_per_seed():
    first = SyntheticTasks(num_examples=50, seed=3).load()
    assert first.column_names == list(POOL_COLUMNS)
    assert first.to_list() == SyntheticTasks(num_examples=50, seed=3).load().to_list()
    assert first["prompt"] != SyntheticTasks(num_examples=50, seed=4).load()["prompt"]


def test_synthetic_answers_are_exact_and_lengths_bounded():
    examples = generate_examples(300, list(TASKS), seed=1, min_length=2, max_length=9)
    assert {example["task"] for example in examples} == set(TASKS)
    assert len({example["id"] for example in examples}) == 300
    assert examples[17]["id"] == f"{examples[17]['task']}-00017"
    for example in examples:
        assert example["response"] == _expected_answer(example["task"], example["prompt"]), example
        assert example["prompt"].isascii() and example["system"] == ""
        if example["task"] in ("copy", "reverse", "sort", "upper", "count", "first", "last", "length", "max_digit",
                               "min_digit"):
            assert 2 <= len(example["prompt"].split(": ", 1)[1]) <= 9


def test_synthetic_unknown_task_names_key_and_valid_names():
    with pytest.raises(ValueError, match=r"tasks.*'bogus'.*valid names.*reverse"):
        SyntheticTasks(tasks=["copy", "bogus"]).load()


def test_describe_changes_with_every_init_arg():
    base = SyntheticTasks().describe()
    variants = [
        SyntheticTasks(num_examples=1),
        SyntheticTasks(tasks=["copy"]),
        SyntheticTasks(seed=1),
        SyntheticTasks(min_length=4),
        SyntheticTasks(max_length=13),
    ]
    assert len({base, *(source.describe() for source in variants)}) == 6
    assert LocalFile("a.jsonl").describe() != LocalFile("a.jsonl", drop_invalid=True).describe()


# --- FlanCoT ---------------------------------------------------------------------------------


@needs_flan
def test_flan_cot_single_file_matches_line_count_and_format():
    file = FLAN_DIR / "aqua_train.tsv"
    lines = file.read_text(encoding="utf-8").splitlines()
    pool = FlanCoT(str(file)).load()
    assert pool.num_rows == len(lines)
    assert set(pool["task"]) == {"aqua"}
    first = pool[0]
    question, answer, rationale = lines[0].split("\t")
    assert first["id"] == "aqua-0"
    assert first["prompt"] == question.replace("\\n", "\n")
    assert "\n" in first["prompt"] and "\\n" not in first["prompt"]
    assert first["response"] == f"{rationale.replace(chr(92) + 'n', chr(10))} So the answer is {answer}."
    assert all(re.search(r" So the answer is .+\.$", response, re.DOTALL) for response in pool["response"])


@needs_flan
def test_flan_cot_folder_has_all_tasks_and_unique_ids():
    pool = FlanCoT(str(FLAN_DIR)).load()
    tasks = {path.name.removesuffix("_train.tsv") for path in FLAN_DIR.glob("*_train.tsv")}
    assert set(pool["task"]) == tasks and "gsm8k" in tasks
    assert len(set(pool["id"])) == pool.num_rows
    assert not any("\\n" in text for text in pool["prompt"])
    subset = FlanCoT(str(FLAN_DIR), tasks=["qasc"]).load()
    assert set(subset["task"]) == {"qasc"}
    with pytest.raises(DataValidationError, match=r"tasks \['nope'\].*available tasks"):
        FlanCoT(str(FLAN_DIR), tasks=["nope"]).load()


def test_flan_cot_malformed_row_names_file_and_line(tmp_path, caplog):
    file = tmp_path / "toy_train.tsv"
    file.write_text("q1\ta1\tr1\nq2\ta2\nq3\ta3\tr3\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"toy_train\.tsv: row 1 \(line 2\): expected 3 tab-separated"):
        FlanCoT(str(file)).load()
    with caplog.at_level(logging.WARNING):
        pool = FlanCoT(str(file), drop_invalid=True).load()
    assert pool["id"] == ["toy-0", "toy-2"]
    assert "dropped 1 of 3" in caplog.text


# --- LocalFile -------------------------------------------------------------------------------


def _write_table(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".jsonl":
        _write_jsonl(path, rows)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_file_round_trip_with_field_mapping(tmp_path, suffix):
    path = tmp_path / f"qa{suffix}"
    _write_table(path, ROWS)
    pool = LocalFile(str(path), fields=MAPPING).load()
    assert pool.column_names == list(POOL_COLUMNS)
    assert pool.to_list() == [
        {"id": str(r["uid"]), "task": "qa", "system": r["sys"], "prompt": r["question"], "response": r["answer"]}
        for r in ROWS
    ]


def test_local_file_identity_columns_and_task_arg(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "response": "r", "extra": 1}])
    assert LocalFile(str(path), task="demo").load().to_list() == [
        {"id": "demo-0", "task": "demo", "system": "", "prompt": "p", "response": "r"}
    ]


def test_local_file_csv_keeps_leading_zero_ids(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,prompt,response\n007,a,b\n", encoding="utf-8")
    assert LocalFile(str(path)).load()["id"] == ["007"]


def test_local_file_messages(tmp_path):
    rows = [
        {"conv": _chat("hi", "hello", system="Be nice."), "kind": "greet"},
        {"conv": _chat("2+2?", "4"), "kind": "math"},
    ]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    pool = LocalFile(str(path), fields={"messages": "conv", "task": "kind"}).load()
    assert pool.to_list() == [
        {"id": "greet-0", "task": "greet", "system": "Be nice.", "prompt": "hi", "response": "hello"},
        {"id": "math-1", "task": "math", "system": "", "prompt": "2+2?", "response": "4"},
    ]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
        [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
    ],
)
def test_local_file_rejects_chats_that_are_not_single_turn(tmp_path, messages):
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": _chat("ok", "fine")}, {"messages": messages}])
    with pytest.raises(DataValidationError, match=r"chat\.jsonl: row 1 \(line 2, id 'chat-1'\): messages roles"):
        LocalFile(str(path)).load()


def test_local_file_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match=r"nothere\.jsonl: file not found"):
        LocalFile(str(tmp_path / "nothere.jsonl")).load()


def test_local_file_mapping_to_missing_column_names_key(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
    with pytest.raises(DataValidationError, match=r"qa\.jsonl: fields\.response -> 'target' names a missing column"):
        LocalFile(str(path), fields={"prompt": "question", "response": "target"}).load()


def test_local_file_without_prompt_response_or_messages(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
    expected = r"fields\.prompt and fields\.response, or fields\.messages; available columns: .*'question'"
    with pytest.raises(DataValidationError, match=expected):
        LocalFile(str(path)).load()


def test_local_file_empty_response_raises_or_is_dropped(tmp_path, caplog):
    rows = [*ROWS, {"uid": 13, "question": "Blank?", "answer": "  ", "sys": ""}]
    path = _write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(DataValidationError, match=r"qa\.jsonl: row 3 \(line 4, id '13'\): response is empty"):
        LocalFile(str(path), fields=MAPPING).load()
    with caplog.at_level(logging.WARNING):
        pool = LocalFile(str(path), fields=MAPPING, drop_invalid=True).load()
    assert pool["id"] == ["10", "11", "12"]
    assert "dropped 1 of 4" in caplog.text and "response is empty: 1 (rows 3)" in caplog.text


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ({"prompt": None, "response": "r"}, "prompt is missing"),
        ({"prompt": "bad \ufffd text", "response": "r"}, "U\\+FFFD"),
    ],
)
def test_local_file_invalid_text(tmp_path, bad_row, reason):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "response": "r"}, bad_row])
    with pytest.raises(DataValidationError, match=rf"t\.jsonl: row 1 .*{reason}"):
        LocalFile(str(path)).load()


def test_local_file_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "caf\xe9", "response": "r"}\n')
    with pytest.raises(DataValidationError, match=r"latin\.jsonl: line 2 is not valid UTF-8"):
        LocalFile(str(path)).load()


def test_parquet_with_invalid_utf8_names_the_row_and_can_be_dropped(tmp_path):
    # Arrow does not validate UTF-8 when writing or reading parquet, so such files exist in the wild.
    prompts = pa.array([b"fine", b"caf\xe9"], pa.binary()).view(pa.string())
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"prompt": prompts, "response": ["a", "b"]}), path)
    with pytest.raises(DataValidationError, match=r"raw\.parquet: row 1 \(id 'raw-1'\): prompt is not valid UTF-8"):
        LocalFile(str(path)).load()
    assert LocalFile(str(path), drop_invalid=True).load()["prompt"] == ["fine"]


def test_local_file_duplicate_ids_name_both_rows(tmp_path):
    path = _write_jsonl(tmp_path / "dup.jsonl", [{**ROWS[0], "uid": 5}, ROWS[1], {**ROWS[2], "uid": 5}])
    with pytest.raises(DataValidationError, match=r"dup\.jsonl: duplicate id '5' in rows 0 and 2"):
        LocalFile(str(path), fields=MAPPING).load()


def test_local_file_unknown_extension_names_path_and_format_key(tmp_path):
    path = tmp_path / "data.xml"
    path.write_text("<x/>", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"data\.xml: cannot infer the format.*`format`"):
        LocalFile(str(path)).load()
    with pytest.raises(DataValidationError, match=r"unknown `format` 'xml'"):
        LocalFile(str(path), format="xml").load()


# --- HubDataset ------------------------------------------------------------------------------


def test_hub_dataset_on_local_folder_with_messages(tmp_path):
    folder = tmp_path / "my_ds"
    (folder / "data").mkdir(parents=True)
    frame = pd.DataFrame(
        {
            "messages": [_chat("Translate: chat", "cat", system="You translate."), _chat("Sum 1 2", "3")],
            "inputs": ["Translate: chat", "Sum 1 2"],
            "_task_name": ["translate", "math"],
        }
    )
    frame.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    pool = HubDataset(name=str(folder), fields={"task": "_task_name"}).load()
    assert pool.to_list() == [
        {
            "id": "translate-0",
            "task": "translate",
            "system": "You translate.",
            "prompt": "Translate: chat",
            "response": "cat",
        },
        {"id": "math-1", "task": "math", "system": "", "prompt": "Sum 1 2", "response": "3"},
    ]
    assert set(HubDataset(name=str(folder)).load()["task"]) == {"my_ds"}
    with pytest.raises(DataValidationError, match=r"my_ds\[train\]: fields\.prompt -> 'question'"):
        HubDataset(name=str(folder), fields={"prompt": "question"}).load()


# --- malformed lines -------------------------------------------------------------------------


def test_local_file_malformed_json_line_names_file_and_line_and_can_be_dropped(tmp_path, caplog):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": \n[1, 2]\n{"prompt": "d", "response": "e"}\n')
    with pytest.raises(DataValidationError, match=r"broken\.jsonl: row 1 \(line 3\): not valid JSON"):
        LocalFile(str(path)).load()
    with caplog.at_level(logging.WARNING):
        pool = LocalFile(str(path), drop_invalid=True).load()
    assert pool["prompt"] == ["a", "d"]
    assert "dropped 2 of 4 rows" in caplog.text and "not valid JSON" in caplog.text and "not a JSON object" in caplog.text


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_local_file_csv_line_with_wrong_field_count(tmp_path, caplog, suffix, sep):
    path = tmp_path / f"table{suffix}"
    lines = ["prompt", "response"], ["a", "b"], ["c", "d", "extra"], ['"multi\nline"', "f"], ["g", "h"]
    path.write_text("".join(sep.join(line) + "\n" for line in lines))
    with pytest.raises(DataValidationError, match=rf"table\{suffix}: row 1 \(line 3\): expected 2 fields .*found 3"):
        LocalFile(str(path)).load()
    with caplog.at_level(logging.WARNING):
        pool = LocalFile(str(path), drop_invalid=True).load()
    assert pool["prompt"] == ["a", "multi\nline", "g"] and "dropped 1 of 4 rows" in caplog.text
    # The row after a quoted two-line field is reported on its own line.
    path.write_text(path.read_text().replace(sep + "extra", "").replace("g" + sep + "h", "g"))
    with pytest.raises(DataValidationError, match=r"row 3 \(line 6\)"):
        LocalFile(str(path)).load()


def test_local_json_array_file_with_a_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n {"prompt": "a", "response": "b"},\n {"prompt": "c" "response": "d"}\n]\n')
    with pytest.raises(DataValidationError, match=r"rows\.json: line 3, column \d+: not valid JSON"):
        LocalFile(str(path)).load()
    path.write_text('[{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]')
    assert LocalFile(str(path)).load()["response"] == ["b", "d"]


def test_local_json_array_file_with_a_non_object_names_the_row(tmp_path):
    # A JSON array has no line per row: the row alone is named (this used to fail with an IndexError).
    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "a", "response": "b"}, [1, 2]]')
    with pytest.raises(DataValidationError, match=r"rows\.json: row 1: not a JSON object but list"):
        LocalFile(str(path)).load()


# --- FlanCoT from a URL (GitHub by default) ---------------------------------------------------


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over http on localhost, standing in for raw.githubusercontent.com."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_flan_cot_from_a_url_is_downloaded_once_then_read_offline(http_folder, tmp_path, monkeypatch):
    import datasets

    root, url = http_folder
    (root / "qasc_train.tsv").write_text("What is 1+1?\t2\tOne and one make two.\n")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    source = FlanCoT(path=f"{url}/", tasks=["qasc"])
    assert source.load()["response"] == ["One and one make two. So the answer is 2."]
    with pytest.raises(DataValidationError, match=rf"{url}/gsm8k_train\.tsv: cannot be downloaded .*404"):
        FlanCoT(path=url, tasks=["gsm8k"]).load()
    # Offline: the cached copy is read; anything else fails at once, naming the URL.
    (root / "qasc_train.tsv").unlink()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert len(source.load()) == 1
    with pytest.raises(DataValidationError, match=rf"{url}/creak_train\.tsv: not in the download cache .*OFFLINE"):
        FlanCoT(path=url, tasks=["creak"]).load()


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    """U+0085 and U+2028 inside a JSON string are not line breaks (str.splitlines would split there)."""
    import json as _json

    from lightning_al.data.sources import LocalFile

    path = tmp_path / "pool.jsonl"
    rows = [{"id": "a", "prompt": "x\u0085y", "response": "r\u2028s"}, {"id": "b", "prompt": "p", "response": "q"}]
    path.write_text("".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    loaded = LocalFile(str(path)).load()
    assert loaded["prompt"] == ["x\u0085y", "p"] and loaded["response"] == ["r\u2028s", "q"]


# --- pools streamed to an Arrow file on disk ----------------------------------------------------


def test_local_file_pool_is_a_memory_mapped_arrow_file_named_by_its_contents(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", ROWS)
    folder = tmp_path / "pools"
    pool = LocalFile(str(path), fields=MAPPING).load(cache_dir=folder)
    assert isinstance(pool.data, MemoryMappedTable)
    [file] = [Path(entry["filename"]) for entry in pool.cache_files]
    assert file.parent == folder and pool["response"] == ["4", "Paris", "NA"]
    # Read again: the same file, nothing added (no copy per run, no temporary file left).
    assert LocalFile(str(path), fields=MAPPING).load(cache_dir=folder).cache_files == pool.cache_files
    assert list(folder.iterdir()) == [file]
    # Edited: another file, with the new contents.
    _write_jsonl(path, [{**ROWS[0], "answer": "four"}, *ROWS[1:]])
    edited = LocalFile(str(path), fields=MAPPING).load(cache_dir=folder)
    assert edited.cache_files != pool.cache_files and edited["response"] == ["four", "Paris", "NA"]
    # Without a cache_dir: beside datasets' caches.
    default = LocalFile(str(path), fields=MAPPING).load()
    assert Path(default.cache_files[0]["filename"]).parent == tmp_path / "hf-cache" / "lightning_al" / "pools"


def test_a_file_pool_travels_to_tokenizing_processes_by_path(tmp_path):
    """datasets.map(num_proc=...) pickles each process's shard of the pool: a memory-mapped pool pickles as
    its file's path and row range, not its rows (an in-memory one sent, and forked, a copy of the pool)."""
    path = _write_jsonl(tmp_path / "qa.jsonl", [{**ROWS[i % 3], "uid": i} for i in range(3000)])
    pool = LocalFile(str(path), fields=MAPPING).load(cache_dir=tmp_path / "pools")
    shard = pool.shard(num_shards=2, index=1, contiguous=True)
    assert len(pickle.dumps(shard)) < path.stat().st_size / 20
    assert pickle.loads(pickle.dumps(shard))[0] == pool[1500]


def _big_pool_rows(rows: int) -> list[dict[str, str]]:
    rng = random.Random(0)
    words = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "answer", "question")
    return [
        {"id": f"ex-{i}", "prompt": " ".join(rng.choices(words, k=220)), "response": " ".join(rng.choices(words, k=40))}
        for i in range(rows)
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_local_file_pool_is_streamed_not_held_in_python(tmp_path, suffix):
    """Reading, validating and writing an 18 MB pool allocates a fraction of it in Python (a chunk of rows,
    and each row's id to check they are unique). Holding it (its text, a dict per row, column lists)
    took 4-6 times the file."""
    path = tmp_path / f"big{suffix}"
    _write_table(path, _big_pool_rows(16_000))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        pool = LocalFile(str(path)).load(cache_dir=tmp_path / "pools")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pool) == 16_000 and pool[15_999]["id"] == "ex-15999"
    assert peak < size / 2, f"peak Python allocations {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"


def test_errors_deep_in_a_streamed_file_name_the_line_and_leave_no_file(tmp_path, caplog):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(2500)]
    rows[2100]["response"] = " "
    lines = [json.dumps(row) for row in rows]
    lines[10] = '{"prompt": "p10", "response": '
    lines.insert(1500, "")  # rows from 1500 on are one line further down
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "pools"
    with pytest.raises(DataValidationError, match=r"big\.jsonl: row 10 \(line 11\): not valid JSON"):
        LocalFile(str(path)).load(cache_dir=folder)
    lines[10] = json.dumps(rows[10])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError, match=r"big\.jsonl: row 2100 \(line 2102, id 'big-2100'\): response is empty"):
        LocalFile(str(path)).load(cache_dir=folder)
    assert list(folder.iterdir()) == []  # a failed pool leaves no file, complete or not
    lines[10] = "[1]"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        pool = LocalFile(str(path), drop_invalid=True).load(cache_dir=folder)
    assert len(pool) == 2498 and "big-10" not in pool["id"] and pool[-1]["id"] == "big-2499"
    assert "dropped 2 of 2500 rows" in caplog.text and "(rows 10)" in caplog.text and "(rows 2100)" in caplog.text


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_byte_deep_in_a_file_names_its_line(tmp_path, suffix):
    path = tmp_path / f"latin{suffix}"
    _write_table(path, [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5000)])
    lines = path.read_bytes().split(b"\n")
    lines[4000] = lines[4000].replace(b"p", b"caf\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataValidationError, match=rf"latin\{suffix}: line 4001 is not valid UTF-8"):
        LocalFile(str(path)).load(cache_dir=tmp_path / "pools")
    assert list((tmp_path / "pools").glob("*")) == []


def test_parquet_pool_is_read_in_chunks_and_names_a_bad_row_past_the_first(tmp_path):
    prompts = [f"p{i}".encode() for i in range(2500)]
    prompts[2200] = b"caf\xe9"
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"prompt": pa.array(prompts, pa.binary()).view(pa.string()), "response": ["r"] * 2500}), path)
    with pytest.raises(DataValidationError, match=r"raw\.parquet: row 2200 \(id 'raw-2200'\): prompt is not valid UTF-8"):
        LocalFile(str(path)).load()
    pool = LocalFile(str(path), drop_invalid=True).load()
    assert len(pool) == 2499 and pool[2200]["prompt"] == "p2201" and pool[1999]["prompt"] == "p1999"
