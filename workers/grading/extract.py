"""Answer extraction from model output, and normalised answer keys for voting.

Rules, in order (the first that matches wins):

- ``math``: the last ``\\boxed{...}`` (balanced braces); else the last "the answer is X" /
  "answer: X" / "#### X"; else the last number in the text (``1,234``, ``-3.5``, ``2/3``).
- ``mcq``: the last "answer is (C)" / "answer: C" / ``\\boxed{C}``; else a reply that starts
  with a letter ("C", "(C)", "C." ...); else the last "(C)" in the text. Capital letters
  A-J; a lower-case letter only inside those explicit patterns.
- ``text``: the last "the answer is X", else the last non-empty line; normalised
  (lower-case, no punctuation, articles or extra spaces).

``answer_kind=None`` guesses the kind from the prompt: options -> ``mcq``; digits or LaTeX
-> ``math``; otherwise ``text``.
"""

from __future__ import annotations

import json
import re
import string
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal

AnswerKind = Literal["math", "mcq", "text"]
ANSWER_KINDS: tuple[str, ...] = ("math", "mcq", "text")

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})")
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*[:=]|answer\s*[:=]|####)\s*[:=]?\s*(.+)",
    re.IGNORECASE,
)
_MCQ_EXPLICIT_RE = re.compile(
    r"(?:answer\s+is|answer\s*[:=]|option\s+is|choice\s+is|\\boxed\{)\s*\(?\s*([A-Ja-j])\s*\)?(?![A-Za-z])",
    re.IGNORECASE,
)
_MCQ_LEADING_RE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])(?:[).:]|\s*$))")
_MCQ_PAREN_RE = re.compile(r"\(([A-J])\)")
_OPTIONS_RE = re.compile(
    r"(?:^|\n)\s*(?:\(?[A-Ja-j]\)|[A-J][.:])\s|options\s*:|choices\s*:", re.IGNORECASE
)
_LATEX_RE = re.compile(r"\\(?:frac|sqrt|boxed|pi|cdot|times)|\$")


def guess_answer_kind(prompt: str) -> AnswerKind:
    """Return ``mcq`` when the prompt lists options, ``math`` when it has digits or LaTeX,
    ``text`` otherwise."""
    if _OPTIONS_RE.search(prompt):
        return "mcq"
    if re.search(r"\d", prompt) or _LATEX_RE.search(prompt):
        return "math"
    return "text"


def last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start == -1:
        return None
    brace = text.find("{", start)
    if brace == -1:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def _last_number(text: str) -> str | None:
    matches = _NUMBER_RE.findall(text)
    return matches[-1] if matches else None


def extract_math(text: str) -> str | None:
    """Return the math answer in ``text`` (see the module docstring), or None."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        tail = matches[-1].group(1).strip()
        # "The answer is 42 apples." -> 42; "The answer is x^2" -> x^2 (first line).
        number = _NUMBER_RE.search(tail)
        if number:
            return number.group(0)
        lines = tail.splitlines()
        line = lines[0].strip().rstrip(".") if lines else ""
        # A symbolic answer ("the answer is \\pi") is kept; prose ("the answer is just
        # the number") falls through to the last number.
        meaningful = re.search(r"[\w\\]", line) is not None
        if meaningful and ("\\" in line or "$" in line or len(line.split()) == 1):
            return line
    return _last_number(text)


def extract_mcq(text: str) -> str | None:
    """Return the option letter (upper-case) chosen in ``text``, or None."""
    matches = list(_MCQ_EXPLICIT_RE.finditer(text))
    if matches:
        return matches[-1].group(1).upper()
    lead = _MCQ_LEADING_RE.match(text)
    if lead:
        return lead.group(1) or lead.group(2)
    parens = _MCQ_PAREN_RE.findall(text)
    if parens:
        return parens[-1]
    return None


def extract_text(text: str) -> str | None:
    """Return the normalised final answer of a free-text reply, or None when empty."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        candidate = (matches[-1].group(1).splitlines() or [""])[0]
    else:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        candidate = lines[-1] if lines else ""
    norm = normalize_text(candidate)
    return norm or None


def extract_answer(
    text: str, answer_kind: AnswerKind | str | None = None, prompt: str | None = None
) -> str | None:
    """Return the answer extracted from a model reply, or None when there is none.

    ``answer_kind`` is ``math``, ``mcq``, ``text`` or None (guessed from ``prompt``, or
    ``math`` when there is no prompt either).
    """
    kind = answer_kind or (guess_answer_kind(prompt) if prompt else "math")
    if kind == "math":
        return extract_math(text)
    if kind == "mcq":
        return extract_mcq(text)
    if kind == "text":
        return extract_text(text)
    raise ValueError(f"unknown answer_kind {kind!r}; known: {', '.join(ANSWER_KINDS)}")


_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace."""
    text = text.lower().translate(_PUNCT_TABLE)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> Fraction | None:
    """Return the exact value of a plain number ("1,234", "-3.50", "2/3", "$5", "40%"
    -> 40), or None when ``text`` is not one number."""
    s = text.strip().strip("$").strip()
    s = re.sub(r"^\\\(|\\\)$", "", s).strip()
    s = s.replace(",", "").replace("\\!", "").replace("{,}", "")
    s = s.rstrip(".").rstrip("%").strip()
    frac = re.fullmatch(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = Fraction(Decimal(num.strip())) / Fraction(Decimal(den.strip()))
        else:
            value = Fraction(Decimal(s))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def answer_key(answer: str | None, answer_kind: AnswerKind | str) -> str | None:
    """Return the canonical form of an extracted answer, used as the key of a vote.

    Numbers become their exact reduced value ("18.0", "18" and "36/2" share one key);
    letters are upper-case; text is normalised.
    """
    if answer is None:
        return None
    if answer_kind == "mcq":
        return answer.strip().strip("()").upper() or None
    if answer_kind == "math":
        value = parse_number(answer)
        if value is not None:
            if value.denominator == 1:
                return str(value.numerator)
            return f"{value.numerator}/{value.denominator}"
        return re.sub(r"\s+", "", answer).rstrip(".") or None
    return normalize_text(answer) or None


def canonical_json(text: str) -> str | None:
    """Return the JSON value in ``text`` re-serialised canonically (sorted keys, no spaces),
    None when ``text`` is not JSON: equal objects vote together whatever their formatting."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_tool_calls(calls: list[dict[str, Any]]) -> str:
    """Return tool calls as one canonical string: names and canonicalised arguments in
    order, ids left out (every sample invents its own)."""
    out = []
    for call in calls:
        function = call.get("function") or {}
        args = function.get("arguments") or ""
        out.append(
            {
                "name": function.get("name"),
                "arguments": (canonical_json(args) or args) if isinstance(args, str) else args,
            }
        )
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
