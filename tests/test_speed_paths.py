"""The fused and plain training paths, their interchangeable checkpoints, and the benchmark command."""

from __future__ import annotations

import json
import types

import pytest
import torch
from conftest import TINY, assert_error

from dlrm_cli.config import BenchmarkSettings, ModelConfig, TableConfig, TrainConfig
from dlrm_cli.model.optim import build_for_training


@pytest.mark.parametrize("embeddings", ["fused", "plain"])
def test_each_path_trains_and_serves(dlrm, tmp_path, embeddings):
    result = dlrm("train", "--epochs", "2", "--embeddings", embeddings, "--name", embeddings, *TINY)
    assert result.exit_code == 0, result.output
    meta = json.loads((dlrm.store / embeddings / "meta.json").read_text())
    assert meta["run"]["train"]["embeddings"] == embeddings
    assert meta["metrics"]["validation"]["rmse"] < meta["metrics"]["validation_baseline"]["rmse"]
    assert dlrm("predict", "--user", "1", "--items", "1,2", "--checkpoint", embeddings).exit_code == 0
    export = dlrm("export", "--checkpoint", embeddings, "--output", tmp_path / f"{embeddings}.pt", "--json")
    assert export.exit_code == 0, export.output
    assert json.loads(export.stdout)["max_abs_difference"] <= 1e-5


def _config() -> ModelConfig:
    return ModelConfig(
        num_dense=2, tables=(TableConfig("a", 50), TableConfig("b", 30)), embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)
    )


def test_fused_updates_only_the_rows_a_batch_uses():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from dlrm_cli.training.run import train_step

    torch.manual_seed(0)
    model, optimizers = build_for_training(_config(), TrainConfig(embeddings="fused"), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([3, 4, 5, 6]), torch.tensor([1, 1, 1, 1]))
    train_step(model, optimizers, torch.randn(2, 2), kjt, torch.tensor([1.0, 4.0]))
    after = model.state_dict()
    table_a = "dlrm.sparse_arch.embedding_bag_collection.embedding_bags.t_a.weight"
    changed = (after[table_a] != before[table_a]).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 4]
    mlp = "dlrm.over_arch.model.1.weight"
    assert not torch.equal(after[mlp], before[mlp])


def test_fused_and_plain_checkpoints_share_keys():
    fused, _ = build_for_training(_config(), TrainConfig(embeddings="fused"), torch.device("cpu"))
    plain, _ = build_for_training(_config(), TrainConfig(embeddings="plain"), torch.device("cpu"))
    assert fused.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fused.state_dict())


def test_plain_path_rejects_fused_only_options(dlrm):
    assert_error(
        dlrm("train", "--embeddings", "plain", "--sparse-lr", "0.3", *TINY),
        2,
        "--sparse-lr applies to --embeddings fused; the plain path trains tables with --lr",
    )


QUICK = ("--repeats", "1", "--seconds", "0.01")


def test_benchmark_smoke_json(dlrm):
    result = dlrm("benchmark", "--rows", "300", *QUICK, "--eval-ratings", "2000", "--concurrent", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["train"]) == {"default", "movielens", "seed"}
    for model in ("default", "movielens", "seed"):
        assert all(figures["train_samples_per_s"] > 0 for figures in report["train"][model].values())
        assert report["train"][model]["fused"]["ceiling_samples_per_s"] > 0
    paths = {"fused", "plain_ebc", "reference", "batched"}
    assert set(report["train"]["seed"]) == paths
    # the built-in data's context columns (channel, hour), and the same model without them: what they cost
    assert set(report["train"]["default"]) == {*paths, "fused_without_context"}
    tables = report["settings"]["tables"]
    assert "channel" in {t["feature"] for t in tables["default"]}
    assert "channel" not in {t["feature"] for model in ("seed", "movielens") for t in tables[model]}
    # the model MovieLens data trains, with its bags, without, and cached: the references have no bags to compare
    assert set(report["train"]["movielens"]) == {"fused", "plain_ebc", "fused_without_bags", "fused_cached_bags"}
    features = {t["feature"] for t in report["settings"]["tables"]["movielens"]}
    assert {"user_id", "item_id"} <= features
    # the seed example's sizes: 1,000 users and 500 items, whatever --rows says
    assert {t["feature"]: t["rows"] for t in report["settings"]["tables"]["seed"]}["user_id"] == 1000
    assert report["concurrency"] == {}
    assert set(report["latency"]) == {"1", "100", "10000"}  # (what each one times: the test below)
    assert report["evaluate"]["ratings"] == 2000
    assert report["mlp"]["mlp_fraction_of_matmul"] > 0
    assert set(report["ratios"]) == {
        "mlp_over_matmul",
        *(f"{model}_fused_{ratio}" for model in ("default", "seed") for ratio in
          ("over_plain_ebc", "over_reference", "over_batched", "share_of_ceiling")),
        *(f"movielens_fused_{ratio}" for ratio in
          ("over_plain_ebc", "over_fused_without_bags", "over_fused_cached_bags", "share_of_ceiling")),
        "default_fused_over_fused_without_context",
    }  # fmt: skip


def test_latency_times_the_scoring_of_each_batch(monkeypatch):
    """On a clock that only scoring moves, a microsecond a pair: each latency figure is the time of one call
    that scores its batch, and the evaluate figure that of the eval-ratings pairs."""
    from dlrm_cli.tools import benchmark

    clock, scored = [0.0], []

    def score(model, catalog, users, items, device):
        assert len(users) == len(items)
        scored.append(len(users))
        clock[0] += 1e-6 * len(users)

    monkeypatch.setattr(benchmark, "score", score)
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    settings = BenchmarkSettings(rows=300, eval_ratings=2000, latency_calls=40)
    latency, evaluate = benchmark._inference(benchmark._data("default", settings), settings)
    calls = {"1": 40, "100": 40, "10000": 5}  # 40 calls at each batch size but the largest: 40 // 20, at least 5
    assert scored == [size for size in (1, 100, 10_000) for _ in range(1 + calls[str(size)])] + [2000]  # warm-ups
    for batch, figures in latency.items():
        milliseconds = 1e-3 * int(batch)
        assert figures == {"p50_ms": pytest.approx(milliseconds), "p99_ms": pytest.approx(milliseconds),
                           "calls": calls[batch]}  # fmt: skip
    assert evaluate == {"ratings": 2000, "seconds": pytest.approx(2e-3), "ratings_per_s": pytest.approx(1e6)}


def test_the_concurrency_figure_is_the_processes_total_over_one_alone(monkeypatch):
    from dlrm_cli.tools import benchmark

    rates = {1: [400.0], 3: [150.0, 100.0, 50.0]}  # samples/s of one process alone, and of each of three at once
    monkeypatch.setattr(benchmark, "_train_in_processes", lambda count, model, settings: rates[count])
    assert benchmark._concurrency("seed", BenchmarkSettings(concurrent=3)) == {
        "processes": 3,
        "solo_samples_per_s": 400.0,
        "each_samples_per_s": [150.0, 100.0, 50.0],
        "total_samples_per_s": 300.0,
        "total_over_solo": 0.75,
    }


@pytest.mark.slow
def test_benchmark_trains_in_several_processes_at_once(dlrm):
    result = dlrm("benchmark", "--model", "seed", "--paths", "fused", *QUICK, "--eval-ratings", "500", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    concurrency = report["concurrency"]
    assert concurrency["model"] == "seed" and concurrency["processes"] == 2
    assert len(concurrency["each_samples_per_s"]) == 2  # each process measured, and said what it measured
    assert report["ratios"]["concurrent_over_solo"] == concurrency["total_over_solo"]


def test_benchmark_table_and_bad_paths(dlrm):
    result = dlrm("benchmark", "--rows", "200", *QUICK, "--eval-ratings", "500", "--paths", "fused",
                  "--concurrent", "0", "--model", "default,seed")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Training, default model" in result.stdout and "Training, seed model" in result.stdout
    assert "of this model's matmul-bound ceiling" in result.stdout and "Evaluate: 500 ratings" in result.stdout
    paths_error = "--paths takes fused, plain_ebc, reference, batched; got 'gpu'"
    assert_error(dlrm("benchmark", "--paths", "fused,gpu"), 2, paths_error)
    assert_error(dlrm("benchmark", "--model", "big"), 2, "--model takes default, movielens, seed; got 'big'")
    assert_error(dlrm("benchmark", "--concurrent", "1"), 2, "--concurrent takes 0 (skip) or 2 or more processes; got 1")
