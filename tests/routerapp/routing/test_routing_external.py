"""External outcome sources (routing.external): each reader on a tiny synthetic copy of its real
file layout (no network, nothing from ../shared), the pricing and pooling of
``transfer.load_external``, and the CLI's ``NAME=DIR`` spelling."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from routerapp.routing.cli import main
from routerapp.routing.external import (
    EXTERNAL,
    LCB_TOKENS,
    LIST_PRICES,
    get_external,
    mot_equal,
    mot_prompt_chars,
    prices_for,
    zeroeval_math_correct,
)
from routerapp.routing.transfer import families, load_external, lofo, parse_external
from routerapp.routing.types import TableError

# --- ZeroEval MATH level 5: result_dirs/math-l5/<model>.json, a JSON list of items -------------


def _zeroeval_item(i: int, output: str, answer: str) -> dict[str, object]:
    return {
        "session_id": str(i),
        "chat_history": [f"\n## Question: \n\nProblem {i}\n\n## Instruction\n\nAnswer in json."],
        "model_input": "n/a",
        "output": [output],
        "generator": "x/model",
        "configs": "{'temperature': 0.0}",
        "dataset": "math-l5",
        "id": str(i),
        "problem": f"Problem {i}: what is x?",
        "answer": answer,
    }


def _write_zeroeval(root: Path) -> Path:
    d = root / "result_dirs" / "math-l5"
    d.mkdir(parents=True)
    good = '```json\n{\n "reasoning": "r",\n "answer": "%s"\n}\n```'
    (d / "grok-2-1212.json").write_text(
        json.dumps(
            [
                _zeroeval_item(0, good % "-15", "-15"),
                _zeroeval_item(1, good % "\\frac{1}{2}", "\\frac{1}{2}"),
                _zeroeval_item(2, good % "7", "8"),
            ]
        )
    )
    (d / "claude-3-5-haiku-20241022.json").write_text(
        json.dumps(
            [
                _zeroeval_item(0, good % "$-15$", "-15"),
                _zeroeval_item(1, "no json here", "\\frac{1}{2}"),
                _zeroeval_item(2, '"answer": 8, broken', "8"),
            ]
        )
    )
    return root


def test_zeroeval_math_rule():
    ok = '{"reasoning": "...", "answer": "3/4"}'
    assert zeroeval_math_correct(ok, "0.75") == 1.0
    assert zeroeval_math_correct('{"answer": "1,000"}', "1000") == 1.0
    assert zeroeval_math_correct('{"answer": "12"}', "13") == 0.0
    assert zeroeval_math_correct("no answer", "13") == 0.0
    assert zeroeval_math_correct('"answer": 13 (broken json', "13") == 1.0
    boxed = "so the result is $\\boxed{36}$"
    assert zeroeval_math_correct(boxed, "36", "Meta-Llama-3.1-8B-Instruct") == 1.0
    assert zeroeval_math_correct(boxed, "36", "gpt-4o") == 0.0  # the box is read for Llama-3.1


def test_zeroeval_math_reader_prices_from_the_list_without_shared_data(tmp_path: Path):
    root = _write_zeroeval(tmp_path / "zeroeval")
    o, p = load_external("zeroeval-math", root)  # no data dir: LIST_PRICES, no pooling
    assert set(o["dataset"]) == {"math_l5"} and families(o) == ["math"]
    assert len(o) == 6 and set(p["prompt_uid"]) == set(o["prompt_uid"])
    acc = o.groupby("model")["correct"].sum().to_dict()
    assert acc == {"grok-2-1212": 2.0, "claude-3-5-haiku-20241022": 2.0}
    row = o[(o["model"] == "grok-2-1212") & o["prompt_uid"].str.endswith("_0")].iloc[0]
    price = LIST_PRICES.set_index("model").loc["grok-2-1212"]
    want = (
        row["input_tokens"] * price["input_usd_per_mtok"]
        + row["output_tokens"] * price["output_usd_per_mtok"]
    ) / 1e6
    assert row["cost_usd"] == pytest.approx(want) and row["cost_usd"] > 0
    assert p.set_index("prompt_uid").loc["zeroeval::math-l5_0", "prompt"].startswith("Problem 0")
    with pytest.raises(TableError, match="at least two task families"):
        lofo(o, p, name="x", seeds=1)


def test_zeroeval_math_pools_with_the_shared_zeroeval_source(tmp_path: Path):
    root = _write_zeroeval(tmp_path / "zeroeval")
    data = tmp_path / "data"
    data.mkdir()
    shared = pd.DataFrame(
        {
            "source": "zeroeval",
            "prompt_uid": ["zeroeval::gsm_0", "zeroeval::gsm_0"],
            "prompt_id": "gsm_0",
            "dataset": "gsm8k",
            "model": ["grok-2-1212", "claude-3-5-haiku-20241022"],
            "strategy": "zeroshot_cot_json_greedy",
            "correct": [1.0, 0.0],
            "output_tokens_est": 50.0,
        }
    )
    shared.to_parquet(data / "dev_outcomes_single.parquet", index=False)
    pd.DataFrame(
        {"prompt_uid": ["zeroeval::gsm_0"], "dataset": ["gsm8k"], "prompt": ["2+2?"], "gold": "4"}
    ).to_parquet(data / "dev_prompts.parquet", index=False)
    # prices.csv wins over the built-in list where it names the model
    pd.DataFrame(
        {
            "model": ["grok-2-1212"],
            "input_usd_per_mtok": [1.0],
            "output_usd_per_mtok": [1.0],
            "price_source": ["test"],
        }
    ).to_csv(data / "prices.csv", index=False)
    assert prices_for(data).set_index("model").loc["grok-2-1212", "input_usd_per_mtok"] == 1.0
    o, p = load_external("zeroeval-math", root, data)
    # the shared rows are priced by prices.csv alone (as transfer.load_source always does):
    # its claude row is dropped there, the external rows keep the built-in list price
    assert families(o) == ["gsm8k", "math"] and len(o) == 7
    assert set(o.loc[o["dataset"] == "gsm8k", "model"]) == {"grok-2-1212"}
    assert "zeroeval::gsm_0" in set(p["prompt_uid"])


# --- MoT cascade: GPT4_result/<task>[_greedy]_<variant>.json + Evaluation/prompting/*.py -------


def _mot_item(q: str, answer: object, results: list[object]) -> dict[str, object]:
    gen = [f"Answer: reasoning {k}\nans = {r}" for k, r in enumerate(results)]
    counter: dict[str, int] = {}
    for r in results:
        counter[str(r)] = counter.get(str(r), 0) + 1
    return {
        "question": q,
        "answer": answer,
        "generated": gen,
        "results": results,
        "result_counter": counter,
        "prediction": results[0] if results else None,
    }


def _write_mot(root: Path) -> Path:
    g4 = root / "GPT4_result"
    g4.mkdir(parents=True)
    gsm = [("Janet has 16 eggs...", 18), ("Tom has 3 apples...", 5)]
    (g4 / "gsm_cot1.json").write_text(
        json.dumps(
            [
                _mot_item(gsm[0][0], 18, [18.0, 17.0, 18.0]),  # first right, majority right
                _mot_item(gsm[1][0], 5, [4.0, 5.0, 5.0]),  # first wrong, majority right
            ]
        )
    )
    (g4 / "gsm_greedy_cot1.json").write_text(
        json.dumps([_mot_item(gsm[0][0], 18, [18.0]), _mot_item(gsm[1][0], 5, [])])
    )
    (g4 / "navigate_pot1.json").write_text(
        json.dumps([_mot_item("Take 3 steps...", "yes", [True, False, False])])
    )
    prompting = root / "Evaluation" / "prompting"
    prompting.mkdir(parents=True)
    (prompting / "gsm8k.py").write_text(
        'gsm_CoT1_prompt = """' + "x" * 400 + '"""\ngsm_PoT1_prompt = "y"\n'
    )
    return root


def test_mot_equal_follows_finqa_equal():
    assert mot_equal(18.0, 18) and not mot_equal(17.0, 18)
    assert mot_equal(0.333, 0.3333333) and not mot_equal(0.34, 0.3333)
    assert mot_equal(True, "yes") and mot_equal(False, "no") and not mot_equal(True, "no")
    assert mot_equal("05/01/2021", "05/01/2021") and not mot_equal("5/1/2021", "05/01/2021")
    assert not mot_equal(None, 3) and not mot_equal([1], 1)


def test_mot_reader_strategies_and_billing(tmp_path: Path):
    root = _write_mot(tmp_path / "mot")
    assert mot_prompt_chars(root) == {("gsm", "cot1"): 400, ("gsm", "pot1"): 1}
    o, p = load_external("mot-gpt4", root)
    assert set(o["model"]) == {"gpt-4"}
    assert set(o["config_id"]) == {
        "gpt-4|cot1_greedy",
        "gpt-4|cot1_sample",
        "gpt-4|maj@3:cot1_sample",
        "gpt-4|pot1_sample",
        "gpt-4|maj@3:pot1_sample",
    }
    assert families(o) == ["gsm8k", "navigate"]
    c = o.set_index(["prompt_uid", "config_id"])["correct"]
    assert c[("mot::gsm_0", "gpt-4|cot1_sample")] == 1.0
    assert c[("mot::gsm_1", "gpt-4|cot1_sample")] == 0.0
    assert c[("mot::gsm_1", "gpt-4|maj@3:cot1_sample")] == 1.0
    assert c[("mot::gsm_1", "gpt-4|cot1_greedy")] == 0.0  # no result: billed and wrong
    assert c[("mot::navigate_0", "gpt-4|pot1_sample")] == 1.0
    assert c[("mot::navigate_0", "gpt-4|maj@3:pot1_sample")] == 0.0
    t = o.set_index(["prompt_uid", "config_id"])
    one = t.loc[("mot::gsm_0", "gpt-4|cot1_sample")]
    three = t.loc[("mot::gsm_0", "gpt-4|maj@3:cot1_sample")]
    q = p.set_index("prompt_uid").loc["mot::gsm_0", "prompt"]
    assert one["input_tokens"] == pytest.approx((400 + len(q)) / 4 + 10)
    assert three["input_tokens"] == one["input_tokens"]  # one call with n=3
    assert three["output_tokens"] > 2.5 * one["output_tokens"]
    assert three["cost_usd"] > one["cost_usd"] > 0


# --- RouterArena: cached_results/<model>.jsonl --------------------------------------------------


def _arena_line(gi: str, model: str, score: float | None, cost: float) -> str:
    ev = (
        None
        if score is None
        else {"score": score, "metric": "mcq_accuracy", "inference_cost": cost, "ground_truth": "A"}
    )
    return json.dumps(
        {
            "global_index": gi,
            "question": f"Question {gi}?",
            "llm_selected": model,
            "generated_answer": "\\boxed{A}",
            "token_usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
            "success": True,
            "provider": "p",
            "error": None,
            "evaluation_result": ev,
        }
    )


def _write_arena(root: Path, n: int = 30) -> Path:
    d = root / "cached_results"
    d.mkdir(parents=True)
    fams = ("MMLUPro_law", "WMT19-de-en", "OpenTDB_Science: Computers")
    for model, (cheap, good) in {"cheap-model": (1e-5, 0.4), "dear-model": (1e-4, 0.9)}.items():
        lines = []
        for i in range(n):
            fam = fams[i % 3]
            score = float((i * 7919 + len(model)) % 100 < good * 100)
            lines.append(_arena_line(f"{fam}_{i}", model, score, cheap * (1 + i % 5)))
        lines.append(_arena_line("GSM8K_999", model, None, 1.0))  # ungraded: skipped
        (d / f"{model}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_routerarena_reader_keeps_graded_rows_with_real_cost(tmp_path: Path):
    root = _write_arena(tmp_path / "arena")
    o, p = load_external("routerarena-sub10", root)
    assert len(o) == 60 and "routerarena::GSM8K_999" not in set(o["prompt_uid"])
    assert families(o) == ["MMLUPro", "OpenTDB", "WMT19"]
    r = o[(o["prompt_uid"] == "routerarena::MMLUPro_law_0") & (o["model"] == "dear-model")]
    assert r["cost_usd"].item() == pytest.approx(1e-4)  # real USD, not priced
    assert r["input_tokens"].item() == 100 and r["output_tokens"].item() == 20
    assert p.set_index("prompt_uid").loc["routerarena::MMLUPro_law_0", "dataset"] == "MMLUPro_law"


def test_cli_leave_one_family_out_on_an_external_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    root = _write_arena(tmp_path / "arena", n=90)
    js = tmp_path / "lofo.json"
    rc = main(
        [
            "evaluate",
            "--leave-one-family-out",
            f"routerarena-sub10={root}",
            "--family",
            "WMT19",
            "--json",
            str(js),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    (row,) = json.loads(js.read_text())["rows"]
    assert row["source"] == "routerarena-sub10" and row["held_out"] == "WMT19"
    assert row["n_configs"] == 2 and row["n_test"] > 0


def test_unknown_or_missing_external_sources_fail_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert set(EXTERNAL) >= {"zeroeval-math", "mot-gpt4", "routerarena-sub10", "lcb-scenarios"}
    for src in EXTERNAL.values():
        assert src.origin.startswith("https://github.com/") and src.license
    with pytest.raises(TableError, match="known: lcb-scenarios, mot-gpt4"):
        get_external("nope")
    with pytest.raises(TableError, match="known"):
        parse_external("nope=/tmp")
    assert parse_external("zeroeval") is None
    with pytest.raises(TableError, match="fetch the source"):
        load_external("mot-gpt4", tmp_path)
    assert main(["evaluate", "--leave-one-family-out", f"mot-gpt4={tmp_path}"]) == 2
    assert "fetch the source" in capsys.readouterr().err


# --- LiveCodeBench leaderboard: src/mocks/performances_{execution,testgen,repair}.json ----------


def _write_lcb(root: Path) -> Path:
    d = root / "src" / "mocks"
    d.mkdir(parents=True)
    ex = [
        {
            "model": m,
            "sample_id": f"sample_{i}",
            "question_id": 2777 + i,
            "Pass@1": p,
            "date": 1683504000000,
            "Pass@1-COT": c,
        }
        for m, rows in {
            "GPT-4-0613": [(100.0, 70.0), (0.0, 40.0)],
            "Claude-2": [(0.0, 0.0)],
        }.items()
        for i, (p, c) in enumerate(rows)
    ]
    tg = [  # two test cases of problem 2727 and one of 2728, the same order for both models
        {"question_id": q, "model": m, "date": 1, "difficulty": "easy", "pass@1": v}
        for m in ("GPT-4-0613", "Claude-2")
        for q, v in ((2727, 30.0), (2727, 0.0), (2728, 90.0))
    ]
    rp = [
        {
            "question_id": "1873_A",
            "model": "GPT-4O-2024-08-06",
            "date": 1,
            "difficulty": "easy",
            "pass@1": 80.0,
            "platform": "codeforces",
        }
    ]
    for name, perf in (("execution", ex), ("testgen", tg), ("repair", rp)):
        (d / f"performances_{name}.json").write_text(
            json.dumps({"performances": perf, "models": [], "date_marks": []})
        )
    return root


def test_lcb_reader_scenarios_strategies_and_proxy_tokens(tmp_path: Path):
    o, p = load_external("lcb-scenarios", _write_lcb(tmp_path / "lcb"))
    assert families(o) == ["execution", "repair", "testgen"]
    assert set(p["prompt"]) == {""}  # the leaderboard files carry no text
    c = o.set_index(["prompt_uid", "config_id"])
    assert c.loc[("lcb::execution_sample_0", "GPT-4-0613|single"), "correct"] == 1.0
    assert c.loc[("lcb::execution_sample_0", "GPT-4-0613|cot"), "correct"] == pytest.approx(0.7)
    assert c.loc[("lcb::execution_sample_1", "GPT-4-0613|cot"), "correct"] == pytest.approx(0.4)
    assert c.loc[("lcb::testgen_2727_0", "Claude-2|single"), "correct"] == pytest.approx(0.3)
    assert c.loc[("lcb::testgen_2727_1", "Claude-2|single"), "correct"] == 0.0
    assert c.loc[("lcb::repair_1873_A", "GPT-4O-2024-08-06|single"), "correct"] == 0.8
    tin, tout = LCB_TOKENS[("repair", "single")]
    assert c.loc[("lcb::repair_1873_A", "GPT-4O-2024-08-06|single"), "cost_usd"] == pytest.approx(
        (tin * 2.5 + tout * 10.0) / 1e6
    )
    # every leaderboard name has a list price (none is dropped for want of one)
    assert len(o) == 4 + 2 + 6 + 1
