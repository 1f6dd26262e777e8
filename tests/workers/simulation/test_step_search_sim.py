"""Offline step_search replayed from a recorded beam search (Tree-of-Thoughts log format)."""

import pytest

from workers.simulation.step_search import (
    PROPOSE_CHARS,
    VALUE_CHARS,
    VALUE_LAST_CHARS,
    CallTokens,
    coverage,
    replay,
    replay_run,
    simulate_step_search,
)

X = "4 4 6 8"
A, B, C = "a (left: 2 3)\n", "b (left: 4 6)\n", "c (left: 1 1)\n"
BB, BB2, CC = B + "Answer: b = 24\n", B + "Answer: b2 = 24\n", C + "Answer: c = 24\n"


def record(idx=900):  # type: ignore[no-untyped-def]
    """A width-2 search: b and c kept after step 0; c's answer (60) and b2 (20) kept after 1."""
    return {
        "idx": idx,
        "steps": [
            {
                "step": 0,
                "x": X,
                "ys": [""],
                "new_ys": [A, B, C],
                "values": [1.0, 20.0, 3.0],
                "select_new_ys": [B, C],
            },
            {
                "step": 1,
                "x": X,
                "ys": [B, C],
                "new_ys": [BB, BB2, CC],
                "values": [1.0, 20.0, 60.0],
                "select_new_ys": [CC, BB2],
            },
        ],  # fmt: skip
        "ys": [CC, BB2],
        "infos": [{"r": 1}, {"r": 0}],
        # cumulative over the run, as ToT logs it
        "usage_so_far": {
            "prompt_tokens": 1000 * (idx - 899),
            "completion_tokens": 100 * (idx - 899),
        },
    }


def test_the_logged_width_reproduces_the_log_and_a_narrower_beam_follows_its_own_path():
    assert replay(record(), 2).correct == 1.0  # picks c's answer, graded r = 1
    narrow = replay(record(), 1)
    # Width 1 keeps b (20) only, then its best child b2 (20): logged as a final, r = 0.
    assert narrow.correct == 0.0 and narrow.reason == "ok"
    assert narrow.proposal_calls == 2
    # Values: a, b, c at step 0 (three distinct prompts), b and b2's judge prompts at step 1.
    assert narrow.value_calls == 5
    assert narrow.proposal_prompt_chars == (PROPOSE_CHARS + len(X)) + (PROPOSE_CHARS + len("4 6"))
    assert narrow.proposal_output_chars == len(A + B + C) + len(BB) - len(B) + len(BB2) - len(B)
    assert narrow.value_prompt_chars == (
        3 * VALUE_CHARS + len("2 3" "4 6" "1 1")
        + 2 * (VALUE_LAST_CHARS + len(X)) + len("b = 24") + len("b2 = 24")
    )  # fmt: skip


def test_a_parent_the_log_never_expanded_is_not_replayed():
    r = record()
    r["steps"][1]["ys"] = [C]  # the log expanded only c: width 1 (which keeps b) cannot go on
    r["steps"][1]["new_ys"] = [CC]
    r["steps"][1]["values"] = [60.0]
    rep = replay(r, 1)
    assert rep.correct is None and rep.reason.startswith("step 1")
    assert coverage([r, record(901)], [1, 2]) == {1: 0.5, 2: 0.5}  # width 2 keeps b too
    assert coverage([record()], [1, 2]) == {1: 1.0, 2: 1.0}


def test_value_calls_are_cached_across_the_run_and_costs_follow_the_rates():
    first, second = replay_run([record(900), record(901)], 2)
    assert first.value_calls == 3 + 3 and second.value_calls == 0  # the same prompts again
    rates = CallTokens(per_prompt_char=0.5, per_output_char=0.25, value_completion=10.0)
    df = simulate_step_search([record()], [1, 2], input_usd_per_mtok=2.0, output_usd_per_mtok=4.0,
                              call_tokens=rates).set_index("config")  # fmt: skip
    row = df.loc["step_search@beam1:value"]
    rep = replay(record(), 1)
    assert row["prompt_id"] == "game24_900" and row["samples"] == 2
    assert row["scorer_tokens"] == pytest.approx(rep.value_prompt_chars * 0.5 + 5 * 10.0)
    expected = (rep.proposal_prompt_chars + rep.value_prompt_chars) * 0.5 * 2e-6 + (
        rep.proposal_output_chars * 0.25 + 5 * 10.0
    ) * 4e-6
    assert row["cost_usd"] == pytest.approx(expected)
    assert df.loc["step_search@beam2:value", "correct"] == 1.0
