"""The labelled item shared by generated problems and loaded labelled sets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelledItem:
    """One prompt with its gold answer.

    ``uid`` is stable across runs (dataset + id, or generator seed + index);
    ``difficulty`` is a level name for generated items and None for loaded ones;
    ``family`` is the generator family or the source dataset.
    """

    uid: str
    prompt: str
    gold: str
    answer_kind: str
    difficulty: str | None = None
    family: str | None = None
