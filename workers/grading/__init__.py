"""Grading: answer extraction, equivalence, generated problems and labelled sets.

No Django imports; everything here runs offline.
"""

from workers.grading.equivalence import gold_answer, grade, is_equivalent
from workers.grading.extract import (
    ANSWER_KINDS,
    AnswerKind,
    answer_key,
    extract_answer,
    guess_answer_kind,
    normalize_text,
)
from workers.grading.types import LabelledItem

__all__ = [
    "ANSWER_KINDS",
    "AnswerKind",
    "LabelledItem",
    "answer_key",
    "extract_answer",
    "gold_answer",
    "grade",
    "guess_answer_kind",
    "is_equivalent",
    "normalize_text",
]
