"""The workflow around the model: recommend, config files, reports, doctor."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, assert_error


def test_recommend_scores_the_whole_catalogue(trained):
    result = trained("recommend", "--user", "7", "--top", "5", "--include-seen", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["scored"] == 150 and len(doc["items"]) == 5
    ratings = [entry["rating"] for entry in doc["items"]]
    assert ratings == sorted(ratings, reverse=True)
    # The top of recommend agrees with predict over the same items (they share the scoring code).
    items = ",".join(entry["item"] for entry in doc["items"])
    predicted = json.loads(trained("predict", "--user", "7", "--items", items, "--json").stdout)
    assert [e["item"] for e in predicted["items"]] == [e["item"] for e in doc["items"]]
    # Batch size changes the matrix kernels' rounding (recommend scores 150 rows at once, predict 5).
    assert [e["rating"] for e in predicted["items"]] == pytest.approx(ratings, abs=1e-5)


def test_recommend_exclude_seen_drops_rated_items(trained):
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.store.checkpoints import CheckpointStore

    train = load_dataset(CheckpointStore(trained.store).load("tiny").run.data).train
    seen = {str(int(i)) for i in train.item[train.user == 7]}
    result = trained("recommend", "--user", "7", "--top", "200", "--json")  # --exclude-seen is the default
    doc = json.loads(result.stdout)
    assert doc["scored"] == 150 - len(seen)
    assert not seen & {entry["item"] for entry in doc["items"]}


def test_recommend_errors(trained):
    assert_error(trained("recommend", "--user", "99999"), 2, "unknown user id '99999'")
    assert_error(trained("recommend", "--user", "1", "--top", "0"), 2, "Invalid value for '--top'")


def test_config_file_with_command_line_overrides(dlrm, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("epochs = 1\nembedding-dim = 16\nlr = 0.002\nusers = 200\nitems = 150\nratings = 6000\n")
    printed = dlrm("train", "--config", config, "--lr", "0.003", "--print-config")
    assert printed.exit_code == 0, printed.output
    assert "epochs = 1\n" in printed.stdout and "lr = 0.003\n" in printed.stdout
    assert "embedding-dim = 16\n" in printed.stdout
    (tmp_path / "effective.toml").write_text(printed.stdout)
    result = dlrm("train", "--config", tmp_path / "effective.toml", "--name", "from-toml")
    assert result.exit_code == 0, result.output
    shown = json.loads(dlrm("checkpoints", "show", "from-toml", "--json").stdout)
    settings = shown["run"]["train"]
    assert settings["lr"] == 0.003 and settings["embedding_dim"] == 16 and settings["epochs"] == 1
    assert shown["run"]["data"]["users"] == 200


def test_bad_config_files(dlrm, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    assert_error(dlrm("train", "--config", bad), 2, "is not valid TOML")
    bad.write_text("epochz = 3\n")
    assert_error(dlrm("train", "--config", bad), 2, "bad.toml: unknown setting 'epochz'")
    bad.write_text("epochs = 0\n")
    assert_error(dlrm("train", "--config", bad), 2, "bad.toml: epochs:")
    bad.write_text("lr = -1\n")
    assert_error(dlrm("train", "--config", bad), 2, "bad.toml: lr: -1.0 is not a positive number")
    assert_error(dlrm("train", "--config", tmp_path / "none.toml"), 2, "none.toml does not exist")


def test_report_html_and_png_name_the_runs(trained, tmp_path):
    assert trained("train", "--epochs", "1", "--name", "second", *TINY).exit_code == 0
    html = tmp_path / "report.html"
    result = trained("report", "tiny", "second", "--output", html)
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "tiny" in text and "second" in text and "data:image/png;base64," in text
    assert text.count("<th>NDCG@10</th>") == 1 and text.count("<tr><td>") == 2  # a ranking figure for each run
    plain = tmp_path / "plain.html"
    assert trained("report", "tiny", "--k", "0", "--output", plain).exit_code == 0
    assert "NDCG@" not in plain.read_text()
    png = tmp_path / "report.png"
    assert trained("report", "--output", png).exit_code == 0
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000


def test_report_errors(trained, tmp_path):
    assert_error(trained("report", "--output", tmp_path / "r.pdf"), 2, "--output must end in .html or .png")
    assert_error(trained("report", "--output", tmp_path / "no" / "r.png"), 2, "does not exist")
    assert_error(trained("report", "nope", "--output", tmp_path / "r.png"), 2, "no checkpoint named 'nope'")


def test_train_summary_shows_a_sparkline(dlrm):
    result = dlrm("train", "--epochs", "3", *TINY)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("Validation RMSE"))
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in line) == 3


def test_doctor_reports_a_working_install(dlrm):
    result = dlrm("doctor", "--json")
    assert result.exit_code == 0, result.output
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    for name in ("python", "torch", "fbgemm", "torchrec", "fbgemm operators", "fused training step", "store"):
        assert checks[name]["status"] == "ok", checks[name]
    table = dlrm("doctor")
    assert "✔ fused training step" in table.stdout


def test_doctor_flags_a_store_that_is_a_file(dlrm, tmp_path):
    dlrm.store = tmp_path / "file"
    dlrm.store.write_text("x")
    result = dlrm("doctor", "--json")
    assert result.exit_code == 1
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["store"]["status"] == "fail" and "not a folder" in checks["store"]["detail"]


def test_rating_data_takes_the_defaults_and_synthetic_data_its_preset_unless_overridden(dlrm, tmp_path):
    printed = dlrm("train", "--data", f"movielens:{tmp_path}", "--print-config")
    assert printed.exit_code == 0, printed.output
    assert 'top-mlp = "64,32"\n' in printed.stdout and "patience = 2\n" in printed.stdout
    assert "bags = true\n" in printed.stdout and 'sparse-optimizer = "adagrad"\n' in printed.stdout
    synthetic = dlrm("train", "--print-config")
    assert "bags = false\n" in synthetic.stdout and 'sparse-optimizer = "rowwise_adagrad"\n' in synthetic.stdout
    assert "embedding-l2 = 0.01\n" in synthetic.stdout and 'top-mlp = "64,32"\n' in synthetic.stdout
    mine = dlrm("train", "--bags", "--embedding-l2", "0.003", "--print-config")
    assert "bags = true\n" in mine.stdout and "embedding-l2 = 0.003\n" in mine.stdout
    # the preset's --sparse-lr must not trip the plain path's check
    plain = dlrm("train", "--embeddings", "plain", "--epochs", "1", *TINY)
    assert plain.exit_code == 0, plain.output
