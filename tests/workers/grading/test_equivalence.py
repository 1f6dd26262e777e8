import threading

from workers.grading import grade, is_equivalent
from workers.grading.equivalence import gold_answer


def test_numeric_equivalence():
    assert is_equivalent("18.0", "18", "math")
    assert is_equivalent("1/2", "0.5", "math")
    assert is_equivalent("-9867630", "-9867630.0", "math")
    assert not is_equivalent("146", "145.0", "math")
    assert not is_equivalent(None, "1", "math")


def test_symbolic_equivalence_with_math_verify():
    assert is_equivalent("\\frac{1}{2}", "0.5", "math")
    assert is_equivalent("x^2+2x", "2x + x^2", "math")
    assert not is_equivalent("x^2+2x", "x^2+3x", "math")


def test_math_verify_works_outside_the_main_thread():
    # math-verify's timeouts use signal.alarm, which fails off the main thread; we must not.
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(is_equivalent("x^2+2x", "2x + x^2", "math")))
    t.start()
    t.join()
    assert out == [True]


def test_mcq_and_text():
    assert is_equivalent("c", "(C)", "mcq")
    assert not is_equivalent("B", "C", "mcq")
    assert is_equivalent("The Eiffel tower", "eiffel tower!", "text")


def test_gold_answer_forms():
    assert gold_answer("9 (apples)", "math") == "9"
    assert gold_answer("\\boxed{7}", "math") == "7"
    assert gold_answer("(C)", "mcq") == "C"
    assert gold_answer("2x + x^2", "math") == "2x + x^2"


def test_grade_end_to_end():
    assert grade("Seven plus two is 9.", "9 (apples)", "math")
    assert grade("The answer is 145", "145.0")
    assert not grade("The answer is 146", "145.0")
    assert grade("The answer is (C)", "C")  # kind guessed from the gold letter
    assert grade("answer: a", "a", prompt="log x ...\nOptions: a ) 12 , b ) 16")
    assert not grade("", "3", "math")
