"""Answer equivalence and grading.

Math answers are compared exactly as numbers first (cheap, and most answers are numbers),
then with math-verify (``math_verify.parse`` / ``verify``) for symbolic answers.
math-verify bounds its work with ``signal.alarm``, which only works in a process's main
thread: there we pass its timeouts; in any other thread (a threaded web server, a worker
thread) we call it without timeouts and instead refuse inputs longer than
``MAX_SYMBOLIC_CHARS``, which keeps sympy from running away on pathological text.
"""

from __future__ import annotations

import logging
import re
import threading

from workers.grading.extract import (
    AnswerKind,
    answer_key,
    extract_answer,
    extract_mcq,
    guess_answer_kind,
    last_boxed,
    normalize_text,
    parse_number,
)

logger = logging.getLogger(__name__)

#: Longest answer handed to math-verify when its signal-based timeout is unavailable.
MAX_SYMBOLIC_CHARS = 200
#: Relative tolerance for numeric equality of non-integers (gold "0.33" vs "1/3" fails;
#: "3.14159" vs "3.1415900" passes).
REL_TOL = 1e-6

_NUMBER_WITH_UNIT_RE = re.compile(r"^\s*\$?\s*(-?[\d,]*\.?\d+)\s*(?:\([^)]*\)|[A-Za-z%. ]+)?\s*$")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _numbers_equal(a: str, b: str) -> bool | None:
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return None
    if x == y:
        return True
    scale = max(abs(x), abs(y))
    return bool(scale and abs(x - y) / scale <= REL_TOL)


def _math_verify_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a pinned dependency
        return False
    main = _in_main_thread()
    if not main and (len(pred) > MAX_SYMBOLIC_CHARS or len(gold) > MAX_SYMBOLIC_CHARS):
        return False
    timeout = 5 if main else None
    try:
        # math-verify wants LaTeX in $...$ to use its LaTeX parser; plain strings work too.
        g = parse(_as_latex(gold), parsing_timeout=timeout)
        p = parse(_as_latex(pred), parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception as exc:  # noqa: BLE001 - math-verify raises many kinds; a failure is "not equal"
        logger.debug("math-verify failed on %r vs %r: %s", pred, gold, exc)
        return False


def _as_latex(s: str) -> str:
    s = s.strip()
    if s.startswith("$") or "\\boxed" in s:
        return s
    return f"${s}$"


def is_equivalent(
    pred: str | None, gold: str | None, answer_kind: AnswerKind | str = "math"
) -> bool:
    """Return True when the extracted answer ``pred`` matches ``gold``.

    ``mcq``: same letter ("(c)" == "C"). ``text``: same normalised text. ``math``: same
    canonical number, else equal under math-verify.
    """
    if pred is None or gold is None:
        return False
    if answer_kind == "mcq":
        return answer_key(pred, "mcq") == answer_key(gold, "mcq")
    if answer_kind == "text":
        return normalize_text(pred) == normalize_text(gold)
    if answer_key(pred, "math") == answer_key(gold, "math"):
        return True
    numeric = _numbers_equal(pred, gold)
    if numeric is not None:
        return numeric
    return _math_verify_equal(pred, gold)


def gold_answer(gold: str, answer_kind: AnswerKind | str) -> str:
    """Return the comparable part of a gold label ("9 (apples)" -> "9", "(C)" -> "C")."""
    gold = str(gold).strip()
    if answer_kind == "math":
        boxed = last_boxed(gold)
        if boxed:
            return boxed
        if parse_number(gold) is not None:
            return gold
        # A number followed by a unit: "9 (apples)", "12 dollars", "$18".
        unit = _NUMBER_WITH_UNIT_RE.match(gold)
        return unit.group(1) if unit else gold
    if answer_kind == "mcq":
        letter = extract_mcq(gold) or gold.strip("() .").upper()
        return letter
    return gold


def grade(
    prediction_text: str,
    gold: str,
    answer_kind: AnswerKind | str | None = None,
    prompt: str | None = None,
) -> bool:
    """Return True when the answer extracted from ``prediction_text`` equals ``gold``.

    ``answer_kind=None`` guesses it from ``prompt`` (or from the gold: a single letter A-J
    is ``mcq``, otherwise ``math``).
    """
    kind = answer_kind
    if kind is None:
        if prompt:
            kind = guess_answer_kind(prompt)
        else:
            g = str(gold).strip().strip("()")
            kind = "mcq" if len(g) == 1 and g.upper() in "ABCDEFGHIJ" else "math"
    pred = extract_answer(prediction_text, kind)
    return is_equivalent(pred, gold_answer(gold, kind), kind)
