import json
from pathlib import Path

import pandas as pd
import pytest

from workers.grading.labelled import load_labelled_set

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "dev_labeled_sets.parquet"


def test_loader_on_a_small_file(tmp_path):
    df = pd.DataFrame(
        {
            "dataset": ["gsm8k_test", "mmlu_pro", "mmlu_pro", "hungarian_exam", "newset"],
            "prompt_id": ["g1", "p1", "p2", "h1", "n1"],
            "prompt": ["How many?", "Pick one", "Pick two", "Set?", "Say hi"],
            "gold": ["18", "C", "A", None, "hello"],
            "extra": [None, json.dumps({"options": json.dumps(["x", "y", "z"])}), None, None, None],
        }
    )
    path = tmp_path / "sets.parquet"
    df.to_parquet(path)
    items = load_labelled_set(path)
    assert [it.uid for it in items] == [
        "gsm8k_test::g1",
        "mmlu_pro::p1",
        "mmlu_pro::p2",
        "newset::n1",
    ]
    assert items[0].answer_kind == "math" and items[1].answer_kind == "mcq"
    assert items[3].answer_kind == "text"
    assert items[1].prompt.endswith("Options:\nA. x\nB. y\nC. z")
    assert [it.uid for it in load_labelled_set(path, dataset="mmlu_pro", limit=1)] == [
        "mmlu_pro::p1"
    ]


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_labelled_set(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="lacks columns"):
        load_labelled_set(bad)


@pytest.mark.skipif(not SHARED.exists(), reason="shared/data not present")
def test_loader_on_shared_data():
    items = load_labelled_set(SHARED, limit=3)
    by_family = {}
    for it in items:
        by_family.setdefault(it.family, []).append(it)
    assert all(len(v) <= 3 for v in by_family.values())
    assert "gsm8k_test" in by_family and "mmlu_pro" in by_family
    assert "hungarian_exam" not in by_family  # no gold labels
    assert by_family["mmlu_pro"][0].prompt.count("\nA. ") == 1
