"""The costpass-router CLI contract (routing.cli): fit / decide / evaluate / serve-jsonl, errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from routerapp.routing import Router
from routerapp.routing.cli import JsonlServer, main


@pytest.fixture(scope="module")
def model_dir(synthetic_suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["fit", "--suite", str(synthetic_suite), "--out", str(out)]) == 0
    return out


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one-line message
    return err[0]


def test_fit_writes_a_loadable_model(model_dir: Path):
    assert (model_dir / "router.json").is_file() and (model_dir / "arrays.npz").is_file()
    assert set(Router.load(model_dir).config_ids) == {"tiny|single", "mid|single", "big|single"}


def test_decide_writes_one_row_per_prompt(model_dir: Path, synthetic_suite: Path, tmp_path: Path):
    out = tmp_path / "d.csv"
    assert (
        main(
            [
                "decide",
                "--model",
                str(model_dir),
                "--prompts",
                str(synthetic_suite / "test_prompts.parquet"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    df = pd.read_csv(out)
    prompts = pd.read_parquet(synthetic_suite / "test_prompts.parquet")
    assert list(df.columns) == ["prompt_uid", "config_id"]
    assert list(df["prompt_uid"]) == list(prompts["prompt_uid"])
    by_tag = (
        df.assign(tag=prompts["dataset"].to_numpy())
        .groupby("tag")["config_id"]
        .agg(lambda s: s.mode()[0])
    )
    assert by_tag["easy"] == "tiny|single" and by_tag["hard"] == "mid|single"


def test_decide_sweep_gives_n_points_from_cheap_to_accurate(
    model_dir: Path, synthetic_suite: Path, tmp_path: Path
):
    out = tmp_path / "s.csv"
    prompts = synthetic_suite / "test_prompts.parquet"
    assert (
        main(
            [
                "decide",
                "--model",
                str(model_dir),
                "--prompts",
                str(prompts),
                "--out",
                str(out),
                "--sweep",
                "4",
            ]
        )
        == 0
    )
    df = pd.read_csv(out)
    assert list(df.columns) == ["prompt_uid", "config_id", "point"]
    assert sorted(df["point"].unique()) == [0, 1, 2, 3]
    n = len(pd.read_parquet(prompts))
    assert (df.groupby("point").size() == n).all()
    assert (df[df["point"] == 0]["config_id"] == "tiny|single").all()
    assert (df[df["point"] == 3]["config_id"] == "big|single").mean() > 0.5


def test_decide_with_lambda(model_dir: Path, synthetic_suite: Path, tmp_path: Path):
    out = tmp_path / "l.csv"
    args = [
        "decide",
        "--model",
        str(model_dir),
        "--prompts",
        str(synthetic_suite / "test_prompts.parquet"),
        "--out",
        str(out),
    ]
    assert main([*args, "--lambda", "1e-9"]) == 0
    assert (pd.read_csv(out)["config_id"] == "tiny|single").all()


def test_decide_reads_only_the_prompts_and_the_model(
    model_dir: Path, synthetic_suite: Path, tmp_path: Path
):
    # A copy of the model and a prompts file alone in a fresh directory are enough.
    iso = tmp_path / "iso"
    shutil.copytree(model_dir, iso / "model")
    shutil.copy(synthetic_suite / "test_prompts.parquet", iso / "p.parquet")
    assert (
        main(
            [
                "decide",
                "--model",
                str(iso / "model"),
                "--prompts",
                str(iso / "p.parquet"),
                "--out",
                str(iso / "o.csv"),
            ]
        )
        == 0
    )


def test_evaluate_prints_and_writes_json(
    model_dir: Path, synthetic_suite: Path, tmp_path: Path, capsys
):
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "evaluate",
                "--suite",
                str(synthetic_suite),
                "--model",
                str(model_dir),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for name in ("router", "best_single_cop", "best_single_acc", "random", "knn", "oracle_min_cop"):
        assert name in text
    res = json.loads(out.read_text())
    pol = res["policies"]
    assert pol["oracle_min_cop"]["gap_closed"] == pytest.approx(1.0)
    assert pol["best_single_cop"]["gap_closed"] == pytest.approx(0.0)
    assert pol["router"]["cop"] < pol["best_single_cop"]["cop"]  # per-task routing pays here
    assert pol["router"]["aiq"] >= res["zero_router_aiq"] - 1e-9
    assert 0 <= pol["router"]["ece_all"] < 0.1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "--suite", "/nonexistent/suite", "--out", "/tmp/x"], "suite directory not found"),
        (
            ["decide", "--model", "/nonexistent/m", "--prompts", "p.parquet", "--out", "o.csv"],
            "no router model",
        ),
        (["frobnicate"], "invalid choice"),
        (["decide", "--model", "m"], "required"),
    ],
)
def test_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in _err_line(capsys)


def test_missing_prompts_file_and_bad_sweep(model_dir: Path, tmp_path: Path, capsys):
    assert (
        main(
            [
                "decide",
                "--model",
                str(model_dir),
                "--prompts",
                str(tmp_path / "none.parquet"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    assert "missing file" in _err_line(capsys)
    assert (
        main(["decide", "--model", str(model_dir), "--prompts", "x", "--out", "y", "--sweep", "0"])
        == 2
    )
    assert "--sweep" in _err_line(capsys)
    assert (
        main(
            [
                "decide",
                "--model",
                str(model_dir),
                "--prompts",
                "x",
                "--out",
                "y",
                "--sweep",
                "2",
                "--lambda",
                "1",
            ]
        )
        == 2
    )
    _err_line(capsys)


def test_fit_rejects_unknown_config_ids_and_malformed_tables(
    synthetic_suite: Path, tmp_path: Path, capsys
):
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_suite, bad)
    cands = pd.read_csv(bad / "candidates.csv")
    cands[cands["config_id"] != "big|single"].to_csv(bad / "candidates.csv", index=False)
    assert main(["fit", "--suite", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "unknown config id" in _err_line(capsys)
    cands.to_csv(bad / "candidates.csv", index=False)
    pd.read_parquet(bad / "train_outcomes.parquet").drop(columns=["correct"]).to_parquet(
        bad / "train_outcomes.parquet"
    )
    assert main(["fit", "--suite", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "missing column" in _err_line(capsys)
    (bad / "train_outcomes.parquet").write_text("this is not parquet")
    assert main(["fit", "--suite", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "cannot read" in _err_line(capsys)


def test_serve_jsonl_answers_every_line_and_survives_bad_ones(model_dir: Path):
    server = JsonlServer(Router.load(model_dir), explore=False)
    lines = [
        {"op": "decide", "prompt_uid": "u1", "prompt": "", "dataset": "hard"},
        {
            "op": "observe",
            "prompt_uid": "u1",
            "config_id": "mid|single",
            "correct": True,
            "cost_usd": 2e-5,
        },
        "not json",
        "[1, 2]",
        {"op": "observe", "prompt_uid": "u1", "config_id": "ghost", "correct": 1},
        {"op": "observe", "prompt_uid": "u1", "config_id": "mid|single", "correct": 7},
        {
            "op": "observe",
            "prompt_uid": "u1",
            "config_id": "mid|single",
            "correct": 1,
            "cost_usd": -1,
        },
        {"op": "teleport"},
        {"op": "decide"},
        {"op": "decide", "prompt_uid": "u2", "dataset": "easy", "constraints": {"max_cost_usd": 0}},
        {"op": "decide", "prompt_uid": "u3", "dataset": "easy", "constraints": {"nonsense": 1}},
        {"op": "decide", "prompt_uid": "u4", "dataset": "easy"},
    ]
    stdin = io.StringIO(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n"
    )
    stdout = io.StringIO()
    server.serve(stdin, stdout)
    answers = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert len(answers) == len(lines) + 1  # one answer per line, the empty one included
    assert answers[0] == {
        "prompt_uid": "u1",
        "config_id": "mid|single",
        "p_correct": pytest.approx(answers[0]["p_correct"]),
        "cost_usd": pytest.approx(answers[0]["cost_usd"]),
    }
    assert 0 < answers[0]["p_correct"] < 1 and answers[0]["cost_usd"] > 0
    assert answers[1] == {"ok": True}
    for i in range(2, 11):
        assert set(answers[i]) == {"error"}, answers[i]
    assert "unknown config id" in answers[4]["error"]
    assert "no allowed candidate" in answers[9]["error"]
    assert answers[11]["config_id"] == "tiny|single"  # still serving after the bad lines
    assert answers[12] == {"error": "empty line"}


def test_serve_jsonl_console_script_flushes_each_answer(model_dir: Path):
    exe = Path(sys.executable).with_name("costpass-router")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "routerapp.routing.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [*cmd, "serve-jsonl", "--model", str(model_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # Interactive: read each answer before sending the next line (works only when flushed).
        proc.stdin.write(json.dumps({"op": "decide", "prompt_uid": "a", "dataset": "easy"}) + "\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        assert first["prompt_uid"] == "a" and first["config_id"] in {
            "tiny|single",
            "mid|single",
            "big|single",
        }
        proc.stdin.write("garbage\n")
        proc.stdin.flush()
        assert "error" in json.loads(proc.stdout.readline())
        proc.stdin.write(
            json.dumps(
                {
                    "op": "observe",
                    "prompt_uid": "a",
                    "config_id": first["config_id"],
                    "correct": 0,
                    "cost_usd": 1e-5,
                }
            )
            + "\n"
        )
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"ok": True}
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
