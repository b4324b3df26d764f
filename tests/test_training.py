"""The training run's life cycle through the core API: early stopping, the best epoch kept, saves when
due, each sparse optimizer, what an observer hears, and what a resumed request keeps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_request

from dlrm_cli.scoring.evaluation import evaluate
from dlrm_cli.store.loading import open_model
from dlrm_cli.training.request import prepare
from dlrm_cli.training.run import Faults, SilentObserver, TrainingRun, train


def _meta(store: Path, name: str) -> dict:
    return json.loads((store / name / "meta.json").read_text())


# Settings under which the TINY set overfits after its fourth epoch: a constant learning rate, no penalty.
OVERFITS = {"lr": 1e-3, "lr_gamma": 1.0, "sparse_lr": 0.2, "embedding_l2": 0.0, "bags": False}


def test_patience_stops_once_that_many_epochs_bring_no_better_validation_rmse(tmp_path):
    store = tmp_path / "store"
    result = train(tiny_request(store, epochs=10, patience=1, **OVERFITS))
    rmse = [record["val_rmse"] for record in result.history]
    best = rmse.index(min(rmse)) + 1
    assert result.best_epoch == best
    assert len(rmse) == best + 1 < 10, rmse  # one epoch without improvement, then it stopped
    meta = _meta(store, result.name)
    assert meta["complete"] and meta["epochs_done"] == len(rmse)


def test_the_checkpoint_serves_the_best_epoch_not_the_last(tmp_path):
    store = tmp_path / "store"
    result = train(tiny_request(store, epochs=5, patience=None, **OVERFITS))
    rmse = [record["val_rmse"] for record in result.history]
    assert result.best_epoch < 5 and rmse[-1] > min(rmse), rmse
    served = evaluate(open_model(store, result.name), "validation").model["rmse"]
    assert served == pytest.approx(rmse[result.best_epoch - 1], rel=1e-5)
    assert served != pytest.approx(rmse[-1], rel=1e-5)


def test_checkpoint_every_saves_when_due_and_at_the_end(tmp_path):
    saved = []

    def record(folder: Path) -> None:
        saved.append(json.loads((folder / "meta.json").read_text())["epochs_done"])

    train(tiny_request(tmp_path / "store", epochs=5, checkpoint_every=2), faults=Faults(before_publish=record))
    assert saved == [2, 4, 5]


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
def test_each_sparse_optimizer_trains_the_tables(tmp_path, torch_threads, optimizer):
    request = tiny_request(tmp_path / "store", sparse_optimizer=optimizer, sparse_lr=0.2, lr_gamma=1.0, threads=1)
    run = TrainingRun(request)
    run.setup()
    tables = run.model.dlrm.sparse_arch.embedding_bag_collection
    before = {name: weight.detach().clone() for name, weight in tables.state_dict().items()}
    result = run.train()
    run.cleanup()
    # Of the baseline's validation RMSE, the run reaches 0.80 (Adagrad, row-wise Adagrad) or 0.85 (SGD); with
    # tables that do not learn (--sparse-lr 0, any optimizer) it reaches 1.01. The line is halfway between.
    assert result.validation["rmse"] < 0.93 * result.baseline["rmse"]
    after = tables.state_dict()
    assert all(not torch.equal(before[name], after[name]) for name in before)
    state = run.optimizers.sparse.state_dict()["state"]
    sizes = {name: tuple(value.shape) for values in state.values() for name, value in values.items()}
    expected = {  # row-wise Adagrad keeps one accumulator per row, Adagrad one per weight, SGD none
        "rowwise_adagrad": {"t_user_id.weight.momentum_1": (200,)},
        "adagrad": {"t_user_id.weight.momentum_1": (200, 16)},
        "sgd": {},
    }[optimizer]
    assert {name: size for name, size in sizes.items() if name.startswith("t_user_id")} == expected


class Recorder(SilentObserver):
    """Notes the name of every event it hears."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def data_loading(self) -> None:
        self.events.append("data_loading")

    def data_loaded(self, dataset, processes) -> None:
        self.events.append("data_loaded")

    def planned(self, shards) -> None:
        self.events.append(f"planned {len(shards)} tables")

    def epoch_started(self, epoch, epochs, batches, lr) -> None:
        self.events.append(f"epoch {epoch}/{epochs} of {batches} batches")

    def batch_done(self, loss) -> None:
        self.events.append("batch_done")

    def epoch_done(self, record) -> None:
        self.events.append(f"epoch {record['epoch']} done")


def test_an_observer_hears_the_run_in_order(tmp_path):
    recorder = Recorder()
    train(tiny_request(tmp_path / "store", epochs=2), observer=recorder)
    batches = 38  # 4,800 training rows in batches of 128

    def epoch(number: int) -> list[str]:
        return [f"epoch {number}/2 of 38 batches", *["batch_done"] * batches, f"epoch {number} done"]

    tables = 6  # user_id, item_id, category, the two bags and the channel (a context column)
    assert recorder.events == ["data_loading", "data_loaded", f"planned {tables} tables", *epoch(1), *epoch(2)]


def test_a_resumed_request_keeps_its_checkpoints_record_but_for_what_may_change(tmp_path):
    store = tmp_path / "store"
    first = train(tiny_request(store, name="first", epochs=1))
    assert first is not None
    asked = tiny_request(store, name=None, epochs=3, lr=0.5, threads=1)
    resumed = prepare(replace(asked, resume="latest", given=frozenset({"resume", "epochs", "threads"})))
    saved = _meta(store, "first")["run"]
    assert resumed.resume == "first" and resumed.config.data.to_dict() == saved["data"]
    assert resumed.config.train.lr == saved["train"]["lr"] != 0.5  # not given: the checkpoint's
    assert (resumed.config.train.epochs, resumed.config.train.threads) == (3, 1)  # given: the command line's


def test_tiny_request_matches_the_command_lines_tiny_run():
    settings = tiny_request(Path("store")).config
    assert [
        "--users", str(settings.data.users), "--items", str(settings.data.items),
        "--ratings", str(settings.data.ratings), "--embedding-dim", str(settings.train.embedding_dim),
        "--batch-size", str(settings.train.batch_size), "--ensemble", str(settings.train.ensemble),
    ] == TINY  # fmt: skip


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# Made-up probe times at 1, 2 and 4 threads: two threads do it 1.92x faster than one, four only 1.3x faster
# than two. The governor must keep two: four are the fastest, but not 1.5x faster than two.
PROBE_SECONDS = {1: 0.0100, 2: 0.0052, 4: 0.0040}


@pytest.mark.parametrize(("threads", "omp", "governed"), [(None, None, True), (1, None, False), (None, "1", False)])
def test_the_thread_count_is_measured_unless_the_user_fixed_it(
    tmp_path, monkeypatch, torch_threads, threads, omp, governed
):
    from dlrm_cli.runtime import threads as module

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    # The run's governor, on a machine of 4 CPUs, times a probe that takes PROBE_SECONDS at torch's thread
    # count of the moment, on a clock that only the probe moves.
    clock = [0.0]

    def probe() -> None:
        clock[0] += PROBE_SECONDS[torch.get_num_threads()]

    class MadeUpTimings(module.ThreadGovernor):
        def __init__(self, most, set_threads) -> None:
            super().__init__(most, set_threads, probe=probe, clock=lambda: clock[0])

    monkeypatch.setattr(module, "available_cpus", lambda: 4)
    monkeypatch.setattr(module, "ThreadGovernor", MadeUpTimings)
    run = TrainingRun(tiny_request(tmp_path / "store", epochs=1, threads=threads))
    try:
        run.setup()
        run.train()
    finally:
        run.cleanup()
    assert (run.governor is not None) == governed
    if governed:  # the count the timings favour, and torch trains with it
        assert run.governor.choice == 2 and torch.get_num_threads() == 2
    else:
        assert torch.get_num_threads() == 1


@pytest.mark.parametrize("schedule", ["step", "plateau"])
def test_a_resumed_run_follows_the_learning_rate_schedule_exactly(tmp_path, torch_threads, schedule):
    """The fused tables take their learning rate in the forward pass. A resumed run's first batch used the
    initial rate, and every epoch's first batch the previous epoch's, until the schedule was handed to the
    kernels when it steps and when it is restored: then 2 epochs and a resume to 4 equal 4 in one go. The
    plateau schedule's memory (its best figure so far) is restored too."""
    decaying = {"lr_schedule": schedule, "lr_step": 1, "lr_gamma": 0.5, "patience": None, "threads": 1}
    whole = train(tiny_request(tmp_path / "a", name="whole", epochs=4, **decaying))
    train(tiny_request(tmp_path / "b", name="split", epochs=2, **decaying))
    resumed = train(replace(tiny_request(tmp_path / "b", name=None, epochs=4, **decaying), resume="split"))
    assert [h["val_rmse"] for h in resumed.history] == pytest.approx([h["val_rmse"] for h in whole.history])
    a = torch.load(tmp_path / "a" / "whole" / "train_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "split" / "train_state.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key])
