"""The learning-rate schedule (on a plateau, or every few epochs), the advice a run gives when it ends still
improving, the ranking objective's warning when it has too few positives, and the summary's layout."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from dlrm_cli.cli import ui
from dlrm_cli.config import ModelConfig, TableConfig, TrainConfig
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.training.advice import positives_warning, run_advice
from dlrm_cli.training.run import TrainResult


def _optimizers(**settings: object):
    config = ModelConfig(
        num_dense=2,
        tables=(TableConfig("user_id", 10), TableConfig("item_id", 10)),
        embedding_dim=4,
        bottom_mlp=(4,),
        top_mlp=(4,),
    )
    _, optimizers = build_for_training(config, TrainConfig(**settings), torch.device("cpu"))  # type: ignore[arg-type]
    return optimizers


def _rates(optimizers) -> list[float]:
    """The dense optimizer's rate and every group's of the fused tables' optimizer."""
    return [optimizers.lr] + [group["lr"] for group in optimizers.sparse.param_groups]


def test_plateau_keeps_the_rate_while_validation_improves_and_decays_it_after_an_epoch_that_does_not():
    optimizers = _optimizers(lr=1e-3, sparse_lr=0.1, lr_gamma=0.5)
    assert optimizers.lr == pytest.approx(1e-3)
    for figure in (0.9, 0.85, 0.84):  # better every epoch: the rate stays
        optimizers.epoch_done(figure)
    assert _rates(optimizers) == pytest.approx([1e-3] + [0.1] * len(optimizers.sparse.param_groups))
    optimizers.epoch_done(0.86)  # worse than 0.84: halved, on the MLPs and the tables alike
    assert _rates(optimizers) == pytest.approx([5e-4] + [0.05] * len(optimizers.sparse.param_groups))
    optimizers.epoch_done(0.83)  # a new best: kept
    assert optimizers.lr == pytest.approx(5e-4)


def test_a_plateau_schedule_needs_the_validation_figure():
    with pytest.raises(ValueError, match="validation figure"):
        _optimizers().epoch_done()


def test_the_step_schedule_decays_every_lr_step_epochs_whatever_validation_does():
    optimizers = _optimizers(lr=1e-3, lr_schedule="step", lr_step=2, lr_gamma=0.5)
    for figure in (0.9, 0.8):  # improving, and decayed all the same after lr_step epochs
        optimizers.epoch_done(figure)
    assert optimizers.lr == pytest.approx(5e-4)


def test_the_plateau_schedule_survives_a_save_and_a_restore():
    optimizers = _optimizers(lr=1e-3, lr_gamma=0.5)
    for figure in (0.9, 0.95):
        optimizers.epoch_done(figure)
    restored = _optimizers(lr=1e-3, lr_gamma=0.5)
    restored.load_state_dict(optimizers.state_dict())
    assert _rates(restored) == pytest.approx(_rates(optimizers))
    restored.epoch_done(0.91)  # still worse than the best (0.9) it remembered: decayed again
    assert restored.lr == pytest.approx(2.5e-4)


def test_records_from_before_the_choice_keep_decaying_every_epoch():
    """A checkpoint written before --lr-schedule existed trained with the step schedule; resuming it must too."""
    record = TrainConfig(lr_schedule="step").to_dict()
    del record["lr_schedule"]
    assert TrainConfig.from_dict(record).lr_schedule == "step"
    assert TrainConfig().lr_schedule == "plateau"


def _history(figures: list[float], rates: list[float], key: str = "val_rmse") -> list[dict[str, float]]:
    return [{"epoch": e, key: f, "lr": r} for e, (f, r) in enumerate(zip(figures, rates, strict=True), start=1)]


def test_a_run_that_ends_still_improving_says_so_with_the_command_to_go_on():
    history = _history([0.90, 0.85, 0.82], [3e-4] * 3)
    [line] = run_advice(history, best_epoch=3, stopped_early=False, settings=TrainConfig(lr=3e-4), name="run-a")
    assert "still improving" in line and "0.8500 → 0.8200" in line
    assert "dlrm train --resume run-a --epochs 6" in line


def test_the_resume_command_names_a_store_that_is_not_the_usual_one(tmp_path, monkeypatch):
    from dlrm_cli.training.advice import store_option

    monkeypatch.delenv("DLRM_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert store_option(Path("checkpoints")) == "" and store_option(tmp_path / "checkpoints") == ""
    assert store_option(tmp_path / "elsewhere") == f" --store {tmp_path / 'elsewhere'}"
    monkeypatch.setenv("DLRM_CHECKPOINT_DIR", str(tmp_path / "elsewhere"))
    assert store_option(tmp_path / "elsewhere") == ""
    history = _history([0.90, 0.85, 0.82], [3e-4] * 3)
    [line] = run_advice(history, 3, False, TrainConfig(lr=3e-4), "run-a", " --store /s")
    assert line.endswith("dlrm train --resume run-a --epochs 6 --store /s")


@pytest.mark.parametrize("last", [0.85, 0.8599])  # improving by much, or by a hair: either way the rate is spent
def test_a_spent_learning_rate_is_named_with_the_option_to_change(last):
    settings = TrainConfig(lr=3e-4, lr_schedule="step", lr_gamma=0.6)
    history = _history([0.90, 0.86, last], [3e-4, 1.8e-4, 2e-6])
    [line] = run_advice(history, best_epoch=3, stopped_early=False, settings=settings, name="run-b")
    assert "decayed to 2.0e-06 (0.7% of --lr 0.0003)" in line and "--lr-schedule plateau" in line
    plateau = run_advice(history, 3, False, TrainConfig(lr=3e-4), "run-b")
    assert "--lr-schedule plateau" not in plateau[0] and "--lr-gamma nearer 1" in plateau[0]


@pytest.mark.parametrize(
    ("figures", "best", "early"),
    [
        ([0.90, 0.85, 0.86], 2, False),  # peaked before the end
        ([0.90, 0.85, 0.8499], 3, False),  # improved by a hair: converged
        ([0.90, 0.85, 0.82], 3, True),  # stopped early (cannot be improving, but the flag decides)
    ],
)
def test_no_advice_for_a_run_that_converged(figures, best, early):
    assert run_advice(_history(figures, [1e-3] * 3), best, early, TrainConfig(), "x") == []


def test_a_ranking_run_ending_still_improving_is_judged_by_ndcg():
    history = _history([0.10, 0.12, 0.15], [1e-3] * 3, key="val_ndcg")
    [line] = run_advice(history, 3, False, TrainConfig(), "r")
    assert "NDCG@10 was still improving" in line


class _Rows:
    def __init__(self, ratings: list[float]) -> None:
        self.rating = torch.tensor(ratings)

    def __len__(self) -> int:
        return len(self.rating)


class _Data:
    def __init__(self, ratings: list[float], implicit: bool = False) -> None:
        self.train = _Rows(ratings)
        self.catalog = type("Catalog", (), {"rating_max": 5.0, "implicit": implicit})()


class _Task:
    def __init__(self, users: int) -> None:
        self.users = torch.arange(users)


def test_the_ranking_objective_warns_when_almost_no_pair_is_liked():
    data = _Data([1.0] * 5000 + [5.0] * 20)
    warning = positives_warning(data, TrainConfig(positives="liked"), _Task(10))
    assert warning is not None and "only 20 of 5,020 training pairs are positives" in warning
    assert "--positives all" in warning
    assert positives_warning(_Data([1.0, 5.0] * 2000), TrainConfig(positives="liked"), _Task(10)) is None
    assert positives_warning(data, TrainConfig(positives="all"), _Task(10)) is None  # every pair counts then
    assert positives_warning(data, TrainConfig(), None) is None  # no ranking head: nothing to say


def test_the_ranking_objective_warns_when_no_validation_user_can_be_ranked():
    warning = positives_warning(_Data([5.0] * 500), TrainConfig(positives="liked"), _Task(0))
    assert warning is not None and "validation NDCG@10 will be 0" in warning


def test_training_on_low_ratings_with_the_ranking_objective_warns_before_it_trains(dlrm, tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = [f"{u},{i},{1 if rng.random() < 0.998 else 5}" for u, i in rng.integers(0, 60, (3000, 2))]
    path = tmp_path / "low.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    result = dlrm("train", "--data", f"csv:{path}", "--objective", "ranking", "--epochs", "1", "--retrieval", "none")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Warning: no validation user has an item rated 4 or above" in text or "Warning: only" in text


def test_a_short_run_that_is_still_improving_prints_the_advice(dlrm):
    result = dlrm("train", "--epochs", "2", "--name", "short", *TINY)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "still improving at the last epoch" in text and "dlrm train --resume short --epochs 4" in text


def _result() -> TrainResult:
    history = [
        {"epoch": 1, "train_loss": 0.5, "val_rmse": 0.9, "lr": 1e-3, "samples_per_s": 1000.0},
        {"epoch": 2, "train_loss": 0.4, "val_rmse": 0.8, "lr": 1e-3, "samples_per_s": 1000.0},
    ]
    return TrainResult("run", history, {"rmse": 0.8}, {"rmse": 1.0}, None, 1.0, 2)


@pytest.mark.parametrize("terminal", [True, False])
def test_the_summary_table_is_left_out_where_the_epoch_lines_are_on_screen(terminal, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    ui.show_training_summary(_result())
    shown = capsys.readouterr().out
    assert ("Training summary" in shown) is not terminal
    assert "Validation RMSE 0.8000 (best epoch 2)" in shown and "Saved checkpoint run" in shown


def test_the_python_api_issues_the_advice_as_a_warning(tmp_path: Path):
    import dlrm_cli

    sizes = {"users": 200, "items": 150, "ratings": 6000, "embedding_dim": 16, "batch_size": 128}
    with pytest.warns(UserWarning, match="still improving at the last epoch"):
        model = dlrm_cli.train("synthetic", epochs=2, name="py", store=tmp_path / "store", **sizes)
    assert model.name == "py"


def test_a_plateau_schedule_with_a_factor_of_one_keeps_the_rate():
    optimizers = _optimizers(lr=1e-3, lr_gamma=1.0)
    for figure in (0.9, 0.95, 0.97):
        optimizers.epoch_done(figure)
    assert optimizers.lr == pytest.approx(1e-3)


def test_the_fused_kernels_take_each_scheduled_rate_when_the_schedule_moves_and_keep_it_between():
    """The fused tables' ``step`` only hands their kernels the rate; dlrm hands it over when the schedule moves
    (an epoch's end, a restore), not at every batch, and the kernels hold it in between."""
    optimizers = _optimizers(lr=0.01, sparse_lr=0.1, lr_schedule="step", lr_step=1, lr_gamma=0.5)
    kernels = _fused_kernels(optimizers)

    def kernel_rates() -> list[float]:
        return [kernel.get_learning_rate() for kernel in kernels]

    assert kernels and kernel_rates() == pytest.approx([0.1] * len(kernels))
    optimizers.step()
    with warnings.catch_warnings():  # the schedule has seen each optimizer step before it steps itself
        warnings.simplefilter("error")
        optimizers.epoch_done()
    assert kernel_rates() == pytest.approx([0.05] * len(kernels))
    for _ in range(3):
        optimizers.zero_grad()
        optimizers.step()
    assert kernel_rates() == pytest.approx([0.05] * len(kernels))


def _fused_kernels(optimizers) -> list:
    """The FBGEMM modules behind the fused tables' optimizer."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    found, stack = [], [optimizers.sparse]
    while stack:
        optimizer = stack.pop()
        if hasattr(optimizer, "optimizers"):  # a CombinedOptimizer: (name, optimizer) pairs
            stack.extend(inner for _, inner in optimizer.optimizers)
        elif isinstance(getattr(optimizer, "_emb_module", None), SplitTableBatchedEmbeddingBagsCodegen):
            found.append(optimizer._emb_module)
    return found
