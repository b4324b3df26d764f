"""Train, evaluate, predict, export and list: the happy paths and the errors a user can cause."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, assert_error, snapshot

from dlrm_cli import CHECKPOINT_FORMAT


def test_train_saves_a_named_checkpoint_and_prints_a_summary(dlrm):
    result = dlrm("train", "--epochs", "1", "--name", "run-a", *TINY)
    assert result.exit_code == 0, result.output
    assert "Training summary — run-a" in result.stdout
    assert "Saved checkpoint run-a" in result.stdout
    assert "epoch 1: train loss" in result.stderr
    meta = json.loads((dlrm.store / "run-a" / "meta.json").read_text())
    assert meta["model"]["embedding_dim"] == 16
    assert meta["run"]["data"]["kind"] == "synthetic" and meta["run"]["data"]["users"] == 200
    assert meta["run"]["train"]["epochs"] == 1 and meta["format"] == CHECKPOINT_FORMAT
    assert len(meta["history"]) == 1
    assert set(meta["versions"]) >= {"python", "torch", "torchrec"}
    assert [p.name for p in dlrm.store.iterdir()] == ["run-a"]  # no temporary folder left behind


def test_train_refuses_a_name_in_use_without_touching_it(trained):
    before = snapshot(trained.store)
    assert_error(trained("train", "--name", "tiny", *TINY), 2, "checkpoint tiny already exists")
    assert snapshot(trained.store) == before


def test_default_names_never_collide(dlrm):
    names = set()
    for _ in range(2):
        result = dlrm("train", "--epochs", "1", *TINY)
        assert result.exit_code == 0, result.output
        names.add(result.stdout.strip().splitlines()[-1].removeprefix("Saved checkpoint "))
    assert len(names) == 2
    assert {p.name for p in dlrm.store.iterdir()} == names


def test_checkpoints_lists_the_store(trained):
    result = trained("checkpoints", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["checkpoints"]
    assert row["name"] == "tiny" and row["epochs"] == 2 and row["latest"] and row["data"] == "synthetic"
    assert 0 < row["val_rmse"] < 2
    table = trained("checkpoints")
    assert "tiny" in table.stdout and "latest" in table.stdout


def test_evaluate_reports_model_baseline_and_noise_floor(trained):
    result = trained("evaluate", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["checkpoint"] == "tiny" and report["split"] == "test" and report["count"] == 600
    # The same figures, computed here from the definitions: the model's own predictions on the test rows.
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.store.loading import open_model

    loaded = open_model(trained.store, "tiny")
    test = load_dataset(loaded.checkpoint.run.data).test
    with torch.no_grad():
        dense, kjt = loaded.catalog.batch(test.user, test.item, context=test.context)  # each row's own context
        error = (loaded.model(dense, kjt).double() - test.rating.double()).numpy()
    mean_error = (float(loaded.meta["global_mean"]) - test.rating.double()).numpy()
    expected = {"model": error, "global_mean_baseline": mean_error}
    for key, errors in expected.items():
        metrics = report[key]
        assert metrics["mse"] == pytest.approx(float(np.mean(errors**2)), rel=1e-5)
        assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-5)
        assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-5)
    assert report["model"]["rmse"] < report["global_mean_baseline"]["rmse"]
    assert report["noise_floor"]["rmse"] < report["model"]["rmse"]
    validation = json.loads(trained("evaluate", "--split", "validation", "--json").stdout)
    assert validation["split"] == "validation" and validation["count"] == 600
    assert validation["model"] != report["model"]
    table = trained("evaluate")
    assert "global-mean baseline" in table.stdout and "noise floor" in table.stdout


def test_predict_ranks_items_best_first(trained):
    result = trained("predict", "--user", "42", "--items", "101,102,103,7", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ratings = [entry["rating"] for entry in doc["items"]]
    assert ratings == sorted(ratings, reverse=True)
    assert sorted(entry["item"] for entry in doc["items"]) == ["101", "102", "103", "7"]
    assert doc["recommended"] == doc["items"][0]["item"]
    assert all(0 <= r <= 5 for r in ratings)
    assert all(len(entry["stars"]) == 5 for entry in doc["items"])
    table = trained("predict", "--user", "42", "--items", "101,102")
    assert "← recommended" in table.stdout and "★" in table.stdout


def test_predict_unknown_ids(trained):
    assert_error(trained("predict", "--user", "999999", "--items", "1"), 2, "unknown user id '999999'")
    assert_error(trained("predict", "--user", "1", "--items", "1,x,7000"), 2, "unknown item ids 'x', '7000'")
    assert_error(trained("predict", "--user", "abc", "--items", "1"), 2, "unknown user id 'abc'")


def test_unknown_checkpoint(trained):
    assert_error(trained("evaluate", "--checkpoint", "nope"), 2, "no checkpoint named 'nope'")


def test_export_torchscript_runs_without_dlrm_or_torchrec(trained, tmp_path):
    output = tmp_path / "model.pt"
    result = trained("export", "--format", "torchscript", "--inputs", "features", "--output", output, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_difference"] <= 1e-5 and report["parity_samples"] == 600
    description = json.loads((tmp_path / "model.pt.json").read_text())
    assert [f["feature"] for f in description["sparse"]] == ["user_id", "item_id", "category", "channel"]
    _run_in_fresh_process(output, "torch.jit.load")


def test_export_pt2(trained, tmp_path):
    output = tmp_path / "model.pt2"
    result = trained("export", "--output", output, "--format", "pt2", "--inputs", "features")
    assert result.exit_code == 0, result.output
    assert "Parity on 600 held-out pairs" in result.stdout
    _run_in_fresh_process(output, "lambda p: torch.export.load(p).module()")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "model.pt2.json", "store"]


def _run_in_fresh_process(path, loader):
    code = f"""
import json, sys, torch
model = ({loader})({str(path)!r})
spec = json.load(open({str(path) + ".json"!r}))
B = 3
dense = torch.zeros(B, spec["dense"]["shape"][1])
ids = [torch.zeros(B, dtype=torch.long) for _ in spec["sparse"]]
offsets = [torch.arange(B) for _ in spec["sparse"]]
out = model(dense, ids, offsets)
assert out.shape == (B,), out.shape
assert ((out >= 0) & (out <= 5)).all()
assert not any(m in sys.modules for m in ("dlrm_cli", "torchrec", "fbgemm_gpu")), "imported more than torch"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_export_int8_is_smaller_and_reports_the_rmse_change(dlrm, tmp_path):
    # Tables large enough to dominate the artifact (25,000 rows x 64), trained briefly.
    args = ["--users", "20000", "--items", "5000", "--ratings", "3000", "--embedding-dim", "64", "--epochs", "1"]
    assert dlrm("train", *args).exit_code == 0
    output = tmp_path / "q.pt"
    result = dlrm("export", "--quantize", "int8", "--inputs", "features", "--output", output, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_difference"] <= 1e-5
    q = report["quantization"]
    assert q["bytes"] < 0.5 * q["float_bytes"], q
    assert abs(q["rmse_change"]) < 0.01 and q["ratings"] == 300
    code = f"""
import torch, torchrec
model = torch.jit.load({str(output)!r})
B = 2
out = model(torch.zeros(B, 14), [torch.zeros(B, dtype=torch.long)] * 4, [torch.arange(B)] * 4)  # with the context
assert out.shape == (B,) and ((out >= 0) & (out <= 5)).all()
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "q.pt.json").read_text())["quantize"] == "int8"


def test_export_into_a_folder_path_is_refused(trained, tmp_path):
    assert_error(trained("export", "--output", tmp_path), 2, "is a folder")


def test_training_really_learns(trained_store):
    meta = json.loads((trained_store / "tiny" / "meta.json").read_text())
    model = meta["metrics"]["validation"]["rmse"]
    baseline = meta["metrics"]["validation_baseline"]["rmse"]
    floor = meta["metrics"]["validation_noise_floor"]["rmse"]
    assert model < 0.85 * baseline, (model, baseline)  # two short epochs on 4,800 ratings
    assert floor < model
