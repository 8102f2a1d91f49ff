"""Answer extraction and exact match on realistic chain-of-thought outputs (BBH conventions)."""

from collections import Counter

import pytest

from lightning_al.evaluation.answers import (
    ANSWER_MARKER,
    answer_of,
    exact_match,
    extract_answer,
    normalize_answer,
    reference_answer,
    truncate_at_stop,
)
from lightning_al.evaluation.bbh import BBH_STOP_STRINGS, load_bbh
from tests.conftest import SHARED

BBH = SHARED / "data" / "bbh"

# (model output, extracted answer, BBH-style target, exact match)
TABLE = [
    (
        (
            "Here in this question, we are told that Frank T. had no intention of shooting anybody. "
            "So the answer is No."
        ),
        "No",
        "No",
        True,
    ),
    (
        (
            "If today is Christmas Eve of 1937, then today's date is December 24, 1937. 10 days before today is "
            "December 14, 1937, that is 12/14/1937. So the answer is (D)."
        ),
        "(D)",
        "(D)",
        True,
    ),
    ("Tomorrow is 11/12/2019, so today is 11/11/2019. So the answer is (D).", "(D)", "(B)", False),
    ("The Statue of Liberty is there. So the answer is New York City.", "New York City", "New York City", True),
    ("By (1), Ashley is a fan of Boca. So, it is not true that ... So the answer is valid.", "valid", "invalid", False),
    ("Lying three times gives the truth again. THE ANSWER IS YES.", "YES", "Yes", True),
    ("Sam is playing soccer, and a touchdown is from football. So the answer is no.", "no", "no", True),
    ("At first the answer is (A). Checking the third paragraph again, the answer is (C).", "(C)", "(C)", True),
    ("2 + 2 = 4 and 4 * 6 = 24. So the answer is 24.\nThis was a multi-step problem.", "24", "24", True),
    ("Let's think step by step.\nWe should process each input one by one and keep a stack.", None, "] )", False),
    ("So the answer is    (B)  .  ", "(B)", "(B)", True),
    ("Half of 7 is 3.5. So the answer is 3.5.", "3.5", "3.5", True),
    ("-(-219) ... So the answer is -219.", "-219", "-219", True),
    ("Now, we have reached the end. So the answer is ] ) }.", "] ) }", "] ) }", True),
    ("The final answer is 5.", None, "5", False),  # only the exemplars' exact phrase counts
    ("So we need to close the brackets: the answer is ]) }.", "]) }", "] ) }", False),
    (
        (
            "Thus, we have arson aspect census mugho newt parthia seismography. "
            "So the answer is arson aspect census mugho newt parthia seismography."
        ),
        "arson aspect census mugho newt parthia seismography",
        "arson aspect census mugho newt parthia seismography",
        True,
    ),
    ("Sorted: So the answer is  syndrome   therefrom.", "syndrome   therefrom", "syndrome therefrom", True),
    ("The answer is: 42", "42", "42", True),
    ("So the answer is True.", "True", "False", False),
    ("So the answer is Yes..", "Yes", "Yes", True),
    ("He was born in the U.S.A. So the answer is U.S.A.", "U.S.A", "U.S.A", True),
    ("The options are lettered, so the answer is A.", "A", "(A)", False),
    ("I don't know", None, "No", False),
    ("So the answer is", None, "(A)", False),
    ("So the answer is\n(A).", None, "(A)", False),  # the answer must be on the marker's line
    ("So the answer is ...", None, "(A)", False),
]


@pytest.mark.parametrize(("output", "extracted", "target", "match"), TABLE)
def test_extract_and_exact_match(output, extracted, target, match):
    assert extract_answer(output) == extracted
    assert exact_match(extract_answer(output), target) is match


@pytest.mark.skipif(not BBH.exists(), reason="needs ../shared/data/bbh")
def test_every_bbh_target_stated_as_the_exemplars_state_answers_is_extracted_and_matched():
    """All 527 distinct BBH targets ("(A)", "] ) }", "valid", "10/05/2015", ...) survive extraction and
    match themselves, and no other target (but a case variant of the same answer)."""
    targets = sorted({row["target"] for row in load_bbh(BBH)})
    variants = Counter(normalize_answer(target) for target in targets)
    assert len(targets) > 500
    for target in targets:
        predicted = extract_answer(f"Step by step, we get there.\nSo the answer is {target}.")
        assert exact_match(predicted, target), target
        assert sum(exact_match(predicted, other) for other in targets) == variants[normalize_answer(target)], target


def test_normalize_answer_keeps_punctuation():
    assert normalize_answer("  New   York\tCity \n") == "new york city"
    assert normalize_answer("(A)") != normalize_answer("A")
    assert normalize_answer("] ) }") != normalize_answer("]) }")


def test_exact_match_none_and_final_periods():
    assert exact_match(None, "No") is False
    assert exact_match(None, "") is False
    assert exact_match("42", "42.") is True  # the target's final period is dropped too
    assert exact_match(" (b) ", "(B)") is True


def test_custom_marker():
    assert extract_answer("48 / 2 = 24\n#### 24", marker="####") == "24"
    with pytest.raises(ValueError, match="marker"):
        extract_answer("anything", marker="")


def test_truncate_at_stop_strings():
    continued = "So the answer is (B).\n\nQ: Which is the next date?\nA: Let's think step by step. The answer is (C)."
    assert truncate_at_stop(continued, BBH_STOP_STRINGS) == "So the answer is (B)."
    # Without the cut, the model's answer to its own invented question would win.
    assert extract_answer(continued) == "(C)"
    assert extract_answer(truncate_at_stop(continued, BBH_STOP_STRINGS)) == "(B)"


def test_truncate_at_earliest_stop():
    assert truncate_at_stop("A is 1. Q: next\n\nmore", ("\n\n", "Q:")) == "A is 1. "
    assert truncate_at_stop("line one\nline two", BBH_STOP_STRINGS) == "line one\nline two"
    assert truncate_at_stop("abc", ("", "c")) == "ab"  # empty stop strings are ignored
    assert truncate_at_stop("abc", ()) == "abc"


def test_reference_answer():
    assert reference_answer("7 * 3 = 21, minus 9 is 12. So the answer is 12.") == "12"
    assert reference_answer("  Paris \n") == "Paris"
    assert reference_answer("42") == "42"


@pytest.mark.parametrize(
    ("generated", "reference", "prediction", "match"),
    [
        ("3 + 4 = 7. So the answer is 7.", "So the answer is 7.", "7", True),
        ("3 + 4 = 8. So the answer is 8.", "So the answer is 7.", "8", False),
        ("I think it is 7", "Adding gives 7. The answer is 7.", None, False),
        ("  cba\n", "cba", "cba", True),
        ("CBA", "cba", "CBA", True),
        ("cba. So the answer is cba.", "cba", "cba. So the answer is cba.", False),
    ],
)
def test_answer_of(generated, reference, prediction, match):
    assert answer_of(generated, reference) == prediction
    assert exact_match(answer_of(generated, reference), reference_answer(reference)) is match


def test_answer_of_with_the_marker_as_reference():
    # A reference that only contains the marker asks for chain-of-thought extraction.
    assert answer_of("So the answer is (A).", ANSWER_MARKER) == "(A)"
