"""Prompt features (routing.features)."""

from __future__ import annotations

import numpy as np
import pytest

from routerapp.routing.features import HANDCRAFTED_NAMES, PromptFeaturizer, handcrafted, tokenize

CORPUS = [
    "Janet has 3 apples and buys 12 more. How many apples does she have?",
    "Compute \\frac{1}{2} + \\sqrt{x^{2}} for x = 4.",
    "def add(a, b):\n    return a + b  # write tests",
    "Which of the following is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel",
    "A train travels 60 miles in 1.5 hours. What is its average speed?",
    "Solve for y: 2y + 7 = 19.",
] * 3


def test_tokenize_folds_numbers_and_keeps_markers():
    toks = tokenize("Add 12 and 3456789 then \\frac{1}{2}")
    assert "00" in toks and "0000" in toks  # digit-count classes, capped at 4
    assert "\\frac" in toks and "{" in toks
    assert "add 00" in toks  # bigrams


def test_handcrafted_markers():
    v = dict(zip(HANDCRAFTED_NAMES, handcrafted("def f(x):\n    return x == 1;"), strict=True))
    assert v["has_text"] == 1.0 and v["log_code"] > 0 and v["log_lines"] > 0
    v = dict(zip(HANDCRAFTED_NAMES, handcrafted("Compute $\\frac{1}{2}$?"), strict=True))
    assert v["log_latex"] > 0 and v["log_questions"] > 0
    v = dict(zip(HANDCRAFTED_NAMES, handcrafted("A) one\nB) two\nC) three"), strict=True))
    assert v["log_options"] == pytest.approx(np.log1p(3))
    assert (
        dict(zip(HANDCRAFTED_NAMES, handcrafted("数学问题"), strict=True))["non_ascii_share"] == 1.0
    )
    assert not handcrafted("").any() and not handcrafted("   ").any()


def test_single_and_batch_encodings_agree_and_empty_is_zero():
    f = PromptFeaturizer(dim=4).fit(CORPUS)
    batch = f.transform(CORPUS[:6] + [""])
    for i, text in enumerate(CORPUS[:6] + [""]):
        assert np.allclose(batch[i], f.transform_one(text))
    assert not batch[-1].any()
    assert batch.shape == (7, f.width) and f.emb_dim == 4


def test_similar_prompts_embed_closer_than_different_ones():
    f = PromptFeaturizer(dim=4).fit(CORPUS)
    e = lambda t: f.encoder.encode_one(t) / np.linalg.norm(f.encoder.encode_one(t))  # noqa: E731
    a = e("Janet has 5 apples and buys 2 more apples. How many apples?")
    b = e("Tom has 7 apples and buys 9 more. How many apples does he have?")
    c = e("def add(a, b):\n    return a + b")
    assert a @ b > a @ c


def test_state_round_trip():
    f = PromptFeaturizer(dim=4).fit(CORPUS)
    meta, arrays = f.state()
    g = PromptFeaturizer.from_state(meta, arrays)
    assert np.allclose(f.transform_one(CORPUS[1]), g.transform_one(CORPUS[1]))
