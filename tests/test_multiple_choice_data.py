"""MMLU-style multiple-choice data: exact prompt text, local files, and bad rows."""

import csv
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_al.evaluation.multiple_choice import (
    LETTERS,
    choice_continuations,
    continuation_ids,
    format_question,
    load_multiple_choice,
    mc_prompt,
)
from tests.conftest import SHARED

MATH = "elementary_mathematics"
ASTRO = "astronomy"
DEV = [
    {"question": "Which planet has rings?", "choices": ["Mars", "Saturn"], "answer": 1, "subject": "astronomy"},
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": MATH},
    {"question": "What is 3 * 3?", "choices": ["6", "9", "12", "33"], "answer": "b", "subject": MATH},
    {"question": "What is 10 / 2?", "choices": ["2", "5", "10", "20"], "answer": 1, "subject": MATH},
]
TEST = [
    {"question": "What is 7 - 4?", "choices": ["1", "2", "3", "4"], "answer": "C", "subject": MATH},
    {"question": "Which planet is largest?", "choices": ["Mars", "Jupiter", "Venus"], "answer": 1, "subject": ASTRO},
    {"question": "What is 1 + 1?", "choices": ["2", "3"], "answer": 0, "subject": MATH},
]

TWO_SHOT_PROMPT = """\
The following are multiple choice questions (with answers) about elementary mathematics.

What is 2 + 2?
A. 3
B. 4
C. 5
D. 6
Answer: B

What is 3 * 3?
A. 6
B. 9
C. 12
D. 33
Answer: B

What is 7 - 4?
A. 1
B. 2
C. 3
D. 4
Answer:"""


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "mmlu_test.jsonl", TEST), write_jsonl(tmp_path / "mmlu_dev.jsonl", DEV)


def test_two_shot_prompt_text(files):
    test, dev = files
    rows = load_multiple_choice(test, fewshot_source=dev, num_fewshot=2)
    assert rows[0]["prompt"] == TWO_SHOT_PROMPT
    assert rows[0] == {
        "index": 0,
        "subject": MATH,
        "question": "What is 7 - 4?",
        "choices": ["1", "2", "3", "4"],
        "answer": 2,  # the letter "C"
        "prompt": TWO_SHOT_PROMPT,
    }


def test_shots_come_from_the_same_subject_and_short_subjects_use_what_they_have(files, caplog):
    test, dev = files
    with caplog.at_level(logging.WARNING):
        rows = load_multiple_choice(test, fewshot_source=dev, num_fewshot=5)
    assert rows[1]["prompt"] == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Which planet has rings?\nA. Mars\nB. Saturn\nAnswer: B\n\n"
        "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nAnswer:"
    )
    assert rows[0]["prompt"].count("Answer:") == 4  # the 3 math exemplars and the question
    assert "astronomy" in caplog.text and MATH in caplog.text


def test_zero_shot_and_no_subject(tmp_path):
    plain = {"question": " Is water wet? ", "choices": ["yes", "no"], "answer": 0}
    [row] = load_multiple_choice(write_jsonl(tmp_path / "plain.jsonl", [plain]), num_fewshot=0)
    assert row["subject"] is None
    expected = "The following are multiple choice questions (with answers).\n\nIs water wet?\nA. yes\nB. no\nAnswer:"
    assert row["prompt"] == expected


def test_format_question_and_continuations():
    assert format_question("Q?", ["x", "y", "z"], 2) == "Q?\nA. x\nB. y\nC. z\nAnswer: C"
    assert mc_prompt("Q?", ["x", "y"], "", []).endswith("(with answers).\n\nQ?\nA. x\nB. y\nAnswer:")
    assert choice_continuations(4) == [" A", " B", " C", " D"]
    assert len(choice_continuations(10)) == len(LETTERS)
    with pytest.raises(ValueError, match="between 1 and 10"):
        choice_continuations(11)
    with pytest.raises(ValueError, match="not one of the 2 choices"):
        format_question("Q?", ["x", "y"], 2)


def sentencepiece_like_tokenizer():
    """A tokenizer built like Llama 2's SentencePiece BPE (a '▁' prepended to the text, spaces as '▁'), set to add
    a BOS and an EOS (``add_eos_token``), as some users configure it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "A", "B", ":", "n", "s", "w", "e", "r", "▁A", "▁B", "▁▁", "An", "Ans",
              "Answ", "Answe", "Answer", "▁Answer"]
    merges = [("▁", "A"), ("▁", "B"), ("▁", "▁"), ("A", "n"), ("An", "s"), ("Ans", "w"), ("Answ", "e"),
              ("Answe", "r"), ("▁", "Answer")]
    model = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>"))
    model.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    model.decoder = decoders.Replace("▁", " ")
    model.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_choices_are_scored_as_the_exemplars_end_with_sentencepiece_tokenizers(tmp_path):
    """Tokenized alone, " A" is ['▁', '▁A'] for a SentencePiece tokenizer, while "Answer: B" in an exemplar ends in
    '▁B': the choice is the tail of the prompt and the choice tokenized together. And the prompt starts with the
    BOS but does not end with the EOS a tokenizer set to add one would put there."""
    from lightning_al.evaluation import MultipleChoice

    tok = sentencepiece_like_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" A", add_special_tokens=False)["input_ids"]) == ["▁", "▁A"]
    assert tok.convert_ids_to_tokens(continuation_ids(tok, "Answer:", " A")) == ["▁A"]
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "Answer", "choices": ["A", "B"], "answer": 1, "subject": ""}) + "\n")
    mmlu = MultipleChoice(source=str(path), num_fewshot=0)
    mmlu.prepare(tok, held_out=None)
    (row,) = mmlu.rows
    assert [tok.convert_ids_to_tokens(c) for c in row["continuations"]] == [["▁A"], ["▁B"]]
    assert row["input_ids"][0] == tok.bos_token_id and row["input_ids"][-1] == tok.convert_tokens_to_ids(":")


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "E"}, r"answer 'E' is not one of the 4 choices"),
        ({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 4}, r"answer 4 is not one of the 4 choices"),
        ({"question": "Q?", "choices": ["only"], "answer": 0}, r"'choices' must be a list of 2 to 10 strings"),
        ({"question": "Q?", "choices": "a b", "answer": 0}, r"'choices' must be a list"),
        ({"question": "Q?", "choices": ["a", 2], "answer": 0}, r"'choices' must be a list of 2 to 10 strings"),
        ({"choices": ["a", "b"], "answer": 0}, r"'question' must be a non-empty string, got None"),
        ({"question": "  ", "choices": ["a", "b"], "answer": 0}, r"'question' must be a non-empty string"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": True}, r"'answer' must be a 0-based choice index"),
        ({"question": "Q?", "choices": ["a", "b"]}, r"'answer' must be a 0-based choice index or a letter A-J"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "subject": 3}, r"'subject' must be a string"),
    ],
)
def test_bad_row_names_the_file_and_row(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "mmlu.jsonl", [TEST[0], TEST[1], bad_row])
    with pytest.raises(ValueError, match=r"mmlu\.jsonl row 2: " + message):
        load_multiple_choice(path, num_fewshot=0)


def test_bad_fewshot_row_names_the_fewshot_file(tmp_path, files):
    test, _ = files
    dev = write_jsonl(tmp_path / "shots.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": "C"}])
    with pytest.raises(ValueError, match=r"shots\.jsonl row 0: answer 'C' is not one of the 2 choices"):
        load_multiple_choice(test, fewshot_source=dev, num_fewshot=1)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(TEST[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl line 3: malformed JSON"):
        load_multiple_choice(str(path), num_fewshot=0)


def test_missing_local_file_names_the_path(tmp_path):
    missing = str(tmp_path / "data" / "mmlu_test.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data/mmlu_test\.jsonl"):
        load_multiple_choice(missing, num_fewshot=0)


def test_unknown_hub_dataset_names_it():
    with pytest.raises((FileNotFoundError, ValueError), match="nobody-here/no-such-mmlu"):
        load_multiple_choice("nobody-here/no-such-mmlu")


def test_local_source_needs_a_fewshot_source(files):
    test, _ = files
    with pytest.raises(ValueError, match=r"mmlu_test\.jsonl.*fewshot_source.*num_fewshot: 0"):
        load_multiple_choice(test)


def test_subject_filter(files):
    test, dev = files
    rows = load_multiple_choice(test, fewshot_source=dev, num_fewshot=1, subjects=["astronomy"])
    assert [(row["index"], row["subject"]) for row in rows] == [(1, "astronomy")]
    one_name = load_multiple_choice(test, num_fewshot=0, subjects=MATH)
    assert [row["index"] for row in one_name] == [0, 2]
    with pytest.raises(ValueError, match=r"'biology'.*\['astronomy', 'elementary_mathematics'\]"):
        load_multiple_choice(test, num_fewshot=0, subjects=["biology"])


def test_max_examples_is_a_seeded_subset_in_file_order(tmp_path):
    many = [{"question": f"Q{i}?", "choices": ["a", "b"], "answer": i % 2} for i in range(50)]
    path = write_jsonl(tmp_path / "many.jsonl", many)
    rows = load_multiple_choice(path, num_fewshot=0, max_examples=8, seed=1)
    indices = [row["index"] for row in rows]
    assert len(indices) == 8 and indices == sorted(indices)
    assert indices == [row["index"] for row in load_multiple_choice(path, num_fewshot=0, max_examples=8, seed=1)]
    assert indices != [row["index"] for row in load_multiple_choice(path, num_fewshot=0, max_examples=8, seed=2)]
    assert len(load_multiple_choice(path, num_fewshot=0, max_examples=500)) == 50
    with pytest.raises(ValueError, match="max_examples"):
        load_multiple_choice(path, num_fewshot=0, max_examples=0)


def test_json_parquet_and_csv_files(tmp_path, files):
    _, dev = files
    expected = load_multiple_choice(files[0], fewshot_source=dev, num_fewshot=2)

    json_path = tmp_path / "test.json"
    json_path.write_text(json.dumps(TEST, indent=2))
    assert load_multiple_choice(str(json_path), fewshot_source=dev, num_fewshot=2) == expected

    parquet_path = tmp_path / "test.parquet"
    table = pa.Table.from_pylist([{**row, "answer": str(row["answer"])} for row in TEST])
    pq.write_table(table, parquet_path)
    assert load_multiple_choice(str(parquet_path), fewshot_source=dev, num_fewshot=2) == expected

    # The original MMLU csv layout: the choices as columns A, B, C, ...; letter answers.
    csv_path = tmp_path / "test.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "A", "B", "answer", "subject"])
        writer.writerow(["What is 1 + 1?\nThink.", "2", "3", "A", MATH])
    [row] = load_multiple_choice(str(csv_path), fewshot_source=dev, num_fewshot=2)
    assert (row["question"], row["choices"], row["answer"]) == ("What is 1 + 1?\nThink.", ["2", "3"], 0)
    assert row["prompt"].endswith("What is 1 + 1?\nThink.\nA. 2\nB. 3\nAnswer:")


def test_files_are_read_as_pools_are_tsv_and_a_short_csv_row(tmp_path):
    # One reader for pools and multiple-choice files: tsv works, and a csv row with too few fields
    # fails naming its line (it used to be read with the missing choices as None).
    tsv_path = tmp_path / "test.tsv"
    tsv_path.write_text("question\tA\tB\tanswer\nWhat is 1 + 1?\t2\t3\tA\n")
    [row] = load_multiple_choice(str(tsv_path), num_fewshot=0)
    assert (row["choices"], row["answer"]) == (["2", "3"], 0)
    csv_path = tmp_path / "short.csv"
    csv_path.write_text("question,A,B,answer\nWhat is 1 + 1?,2,3,A\nWhat is 2 + 2?,4,B\n")
    with pytest.raises(ValueError, match=r"short\.csv line 3: malformed CSV: expected 4 fields"):
        load_multiple_choice(str(csv_path), num_fewshot=0)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no multiple-choice rows"):
        load_multiple_choice(str(path), num_fewshot=0)


MMLU = SHARED / "data" / "mmlu"


def _by_subject(path):
    rows = {}
    for line in path.read_text().split("\n")[:-1]:
        row = json.loads(line)
        rows.setdefault(row["subject"], []).append(row)
    return rows


def test_offline_mmlu_sample_takes_its_exemplars_from_dev_jsonl():
    rows = load_multiple_choice(str(MMLU / "test.jsonl"), fewshot_source=str(MMLU / "dev.jsonl"), num_fewshot=5,
                                max_examples=30, seed=0)
    dev = _by_subject(MMLU / "dev.jsonl")
    test = (MMLU / "test.jsonl").read_text().split("\n")  # not splitlines: questions hold U+0085
    assert len(rows) == 30 and len({row["subject"] for row in rows}) > 10
    for row in rows:
        assert json.loads(test[row["index"]])["question"] == row["question"]  # index: the row in test.jsonl
        shots = [{**shot, "answer": int(shot["answer"])} for shot in dev[row["subject"]][:5]]
        assert row["prompt"] == mc_prompt(row["question"], row["choices"], row["subject"], shots)
    zero = load_multiple_choice(str(MMLU / "test.jsonl"), num_fewshot=0, max_examples=30, seed=0)
    assert [r["index"] for r in zero] == [r["index"] for r in rows]
    assert zero[0]["prompt"].count("Answer:") == 1 and zero[0]["prompt"].endswith("Answer:")


def test_a_question_repeated_among_the_exemplars_is_left_out_of_its_prompt():
    """MMLU repeats a few questions: test.jsonl row 1330 is one of college physics' dev exemplars."""
    rows = load_multiple_choice(str(MMLU / "test.jsonl"), fewshot_source=str(MMLU / "dev.jsonl"), num_fewshot=5,
                                subjects=["college_physics"])
    row = next(r for r in rows if r["index"] == 1330)
    dev = _by_subject(MMLU / "dev.jsonl")["college_physics"]
    assert any(shot["question"] == row["question"] for shot in dev)
    assert row["prompt"].count(row["question"].strip()) == 1 and row["prompt"].count("Answer:") == 5
