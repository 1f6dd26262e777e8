import pytest

from workers.grading.extract import (
    answer_key,
    extract_answer,
    guess_answer_kind,
    last_boxed,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("We get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
        ("first \\boxed{3} then \\boxed{x^{2}}", "x^{2}"),
        ("So 12+7 = 19. The answer is 19.", "19"),
        ("The final answer is: 1,234 apples", "1,234"),
        ("#### 72", "72"),
        ("She has 3 apples and then 5 apples", "5"),
        ("8 + 8 = 10. The answer is just the number itself.", "10"),
        ("temperature -3.5 degrees", "-3.5"),
        ("no digits at all", None),
    ],
)
def test_extract_math(text, expected):
    assert extract_answer(text, "math") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("B. because it is", "B"),
        ("(D) since the others fail", "D"),
        ("I think (D) is right", "D"),
        ("answer: b", "B"),
        ("A", "A"),
        ("A cat sat on the mat", None),
        ("\\boxed{E}", "E"),
    ],
)
def test_extract_mcq(text, expected):
    assert extract_answer(text, "mcq") == expected


def test_extract_text_normalises():
    assert (
        extract_answer("Let me think.\nThe answer is The Eiffel Tower!", "text") == "eiffel tower"
    )
    assert extract_answer("  \n", "text") is None


def test_last_boxed_balances_braces():
    assert last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None


def test_answer_keys_merge_equal_numbers():
    assert (
        answer_key("18.0", "math") == answer_key("18", "math") == answer_key("36/2", "math") == "18"
    )
    assert answer_key("1,000", "math") == "1000"
    assert answer_key("0.5", "math") == "1/2"
    assert answer_key("(c)", "mcq") == "C"
    assert answer_key("x ^ 2", "math") == "x^2"
    assert answer_key(None, "math") is None


def test_parse_number():
    assert parse_number("$1,234.50") == parse_number("1234.5")
    assert parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert parse_number("40%") == 40
    assert parse_number("x+1") is None
    assert parse_number("1/0") is None


def test_guess_answer_kind():
    assert guess_answer_kind("What is 2+2?") == "math"
    assert guess_answer_kind("Which?\nA. one\nB. two") == "mcq"
    assert guess_answer_kind("if x ...\nOptions: a ) 12 , b ) 16") == "mcq"
    assert guess_answer_kind("Name the capital of France") == "text"


def test_unknown_kind():
    with pytest.raises(ValueError, match="known: math, mcq, text"):
        extract_answer("1", "poem")


def test_empty_answer_tail_does_not_crash():
    assert extract_answer("The answer is:\n", "math") is None
    assert extract_answer("answer:   ", "text") is None
    assert extract_answer("Answer: \n\n 42", "math") == "42"
