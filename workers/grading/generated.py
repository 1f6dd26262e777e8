"""A seeded generator of labelled arithmetic and word problems at graded difficulty.

Shipped with the code (no download), so live runs on the small CPU model show a real
spread of accuracies. Levels were tuned on SmolLM2-135M-Instruct (greedy, see
bench/README.md): ``easy`` single-digit sums, ``medium`` two-digit sums / differences and
one-step word problems, ``hard`` multi-step expressions and two-step word problems.

The same (n, seed, difficulty) always yields the same items; the uid of an item is
``gen-<seed>-<index>`` and does not depend on ``n``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from workers.grading.types import LabelledItem

DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

INSTRUCTION = "Reply with just the number."

_NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Max", "Zoe")
_THINGS = ("apples", "books", "coins", "pens", "cards", "stickers", "marbles", "cookies")

Maker = Callable[[random.Random], tuple[str, int, str]]


def _easy_add(r: random.Random) -> tuple[str, int, str]:
    a, b = r.randint(1, 9), r.randint(1, 9)
    return f"What is {a} + {b}?", a + b, "arithmetic"


def _easy_word(r: random.Random) -> tuple[str, int, str]:
    name, thing = r.choice(_NAMES), r.choice(_THINGS)
    a, b = r.randint(1, 5), r.randint(1, 4)
    q = f"{name} has {a} {thing}. {name} gets {b} more {thing}. How many {thing} does {name} have now?"
    return q, a + b, "word"


def _medium_add(r: random.Random) -> tuple[str, int, str]:
    a, b = r.randint(10, 49), r.randint(10, 49)
    if r.random() < 0.5:
        return f"What is {a} + {b}?", a + b, "arithmetic"
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b, "arithmetic"


def _medium_word(r: random.Random) -> tuple[str, int, str]:
    name, thing = r.choice(_NAMES), r.choice(_THINGS)
    a = r.randint(8, 20)
    b = r.randint(2, a - 2)
    q = f"{name} has {a} {thing} and gives away {b} {thing}. How many {thing} are left?"
    return q, a - b, "word"


def _hard_expr(r: random.Random) -> tuple[str, int, str]:
    a, b, c = r.randint(3, 12), r.randint(3, 12), r.randint(10, 60)
    if r.random() < 0.5:
        return f"What is {a} * {b} + {c}?", a * b + c, "arithmetic"
    return f"What is {c} - {a} + {b} * 2?", c - a + b * 2, "arithmetic"


def _hard_word(r: random.Random) -> tuple[str, int, str]:
    name, thing = r.choice(_NAMES), r.choice(_THINGS)
    boxes, per, eaten = r.randint(3, 9), r.randint(4, 12), r.randint(2, 9)
    q = (
        f"{name} buys {boxes} boxes with {per} {thing} in each box, then loses {eaten} "
        f"{thing}. How many {thing} does {name} have?"
    )
    return q, boxes * per - eaten, "word"


_MAKERS: dict[str, tuple[Maker, ...]] = {
    # Single-digit sums are the easiest thing this model does reliably; word problems
    # at this level are harder for it, so they are a third of the level.
    "easy": (_easy_add, _easy_add, _easy_word),
    "medium": (_medium_add, _medium_word),
    "hard": (_hard_expr, _hard_word),
}


def generate_problems(n: int, seed: int = 0, difficulty: str | None = None) -> list[LabelledItem]:
    """Return ``n`` labelled problems (``answer_kind="math"``, integer gold).

    ``difficulty`` is one of :data:`DIFFICULTIES`, or None to cycle easy, medium, hard.
    Raise ``ValueError`` for an unknown difficulty or a negative ``n``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if difficulty is not None and difficulty not in _MAKERS:
        raise ValueError(f"unknown difficulty {difficulty!r}; known: {', '.join(DIFFICULTIES)}")
    items: list[LabelledItem] = []
    for i in range(n):
        level = difficulty or DIFFICULTIES[i % len(DIFFICULTIES)]
        # One generator per item: the i-th item never depends on n or on other items.
        r = random.Random(f"{seed}:{level}:{i}")
        maker = r.choice(_MAKERS[level])
        question, answer, family = maker(r)
        items.append(
            LabelledItem(
                uid=f"gen-{seed}-{level}-{i}",
                prompt=f"{question} {INSTRUCTION}",
                gold=str(answer),
                answer_kind="math",
                difficulty=level,
                family=family,
            )
        )
    return items
