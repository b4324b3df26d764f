"""The Python API: `from dlrm_cli import load`, answering as the command line does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import Dlrm

from dlrm_cli.errors import CheckpointNotFound, DlrmUsageError


@pytest.fixture(scope="module")
def model(trained_store):
    from dlrm_cli import load

    return load("tiny", trained_store)


def _printed(store, *args: str) -> dict:
    result = Dlrm(store)(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_predict_is_the_commands_ranking(model, trained_store):
    ranking = model.predict(42, [101, 102, 3])
    assert ranking.to_dict() == _printed(trained_store, "predict", "--user", "42", "--items", "101,102,3")
    assert [item.item for item in ranking.items] == [e["item"] for e in ranking.to_dict()["items"]]


def test_recommend_leaves_out_what_the_user_rated(model, trained_store):
    from dlrm_cli.data.sources import load_dataset

    recommendation = model.recommend("42", top=5)
    printed = _printed(trained_store, "recommend", "--user", "42", "--top", "5")
    assert [e.item for e in recommendation.ranking.items] == [e["item"] for e in printed["items"]]
    assert recommendation.scored == printed["scored"]
    train = load_dataset(model.loaded.checkpoint.run.data).train
    rated = {str(int(i)) for i in train.item[train.user == 42]}
    assert rated and not rated & {e.item for e in model.recommend(42, top=150).ranking.items}
    assert len(model.recommend(42, top=150, exclude_seen=False).ranking.items) == 150


def test_score_keeps_the_order_asked_and_agrees_with_predict(model):
    scores = model.score([42, 42, 7], [101, 102, 101])
    by_item = {e.item: e.rating for e in model.predict(42, [101, 102]).items}
    assert scores[:2].tolist() == pytest.approx([by_item["101"], by_item["102"]], abs=1e-6)
    assert scores[2] == pytest.approx(model.predict(7, [101]).items[0].rating, abs=1e-6)
    with pytest.raises(ValueError, match="one user per item"):
        model.score([1], [1, 2])


def test_queries_answered_together_equal_queries_answered_alone(model):
    queries = [model.predict_query(user, [1, 2, 3, 101]) for user in range(20)]
    together = model.answer(queries)
    for user, ranking in enumerate(together):
        alone = model.predict(user, [1, 2, 3, 101])
        assert [e.item for e in ranking.items] == [e.item for e in alone.items]
        ratings = [torch.tensor([e.rating for e in r.items]) for r in (ranking, alone)]
        assert torch.allclose(*ratings, atol=1e-5)


def test_errors_are_dlrm_errors_with_one_line(model, trained_store):
    from dlrm_cli import load

    with pytest.raises(CheckpointNotFound, match="no checkpoint named 'nope'"):
        load("nope", trained_store)
    with pytest.raises(DlrmUsageError, match="unknown user id '999999'"):
        model.predict(999999, [1])


def test_importing_the_package_stays_cheap():
    loaded = "print('torch' in sys.modules)"
    code = f"import sys, dlrm_cli\n{loaded}\nfrom dlrm_cli import load\n{loaded}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr


@pytest.mark.slow
def test_the_readme_example_runs_verbatim(trained_store, tmp_path):
    import ast
    import os
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme.split("## Python API", 1)[1], re.S).group(1)
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(trained_store)}
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ranked, top, scores = out.stdout.strip().splitlines()
    predicted = _printed(trained_store, "predict", "--user", "42", "--items", "101,102")
    assert ast.literal_eval(ranked) == [(e["item"], round(e["rating"], 2)) for e in predicted["items"]]
    recommended = _printed(trained_store, "recommend", "--user", "42", "--top", "3")
    assert ast.literal_eval(top) == [e["item"] for e in recommended["items"]]
    by_item = {e["item"]: e["rating"] for e in predicted["items"]}
    assert scores == f"tensor([{by_item['101']:.4f}, {by_item['102']:.4f}])"
