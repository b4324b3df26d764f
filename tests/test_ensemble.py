"""--ensemble: several models trained side by side in one checkpoint, each on its own loss, predicting their mean."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_error
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig, TableConfig, TrainConfig
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.model.dlrm import RatingDLRM, TrainingDLRM
from dlrm_cli.store.checkpoints import upgrade_meta
from dlrm_cli.store.record import record_problem
from dlrm_cli.training.run import Objective

FAST = ["--epochs", "2", *TINY]
FORMAT1_META = Path(__file__).parent / "data" / "format1" / "store" / "format1" / "meta.json"


def _config(ensemble: int) -> ModelConfig:
    tables = (TableConfig("user_id", 10), TableConfig("item_id", 20))
    return ModelConfig(num_dense=2, tables=tables, embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8,), ensemble=ensemble)


def _batch() -> tuple[torch.Tensor, KeyedJaggedTensor]:
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id"], values=torch.tensor([1, 2, 3, 4, 5, 6]), lengths=torch.ones(6, dtype=torch.long)
    )
    return torch.randn(3, 2), kjt


def test_an_ensemble_predicts_the_mean_of_its_models_logits():
    torch.manual_seed(0)
    model = TrainingDLRM(_config(3))
    dense, kjt = _batch()
    members, embedded = model(dense, kjt)
    assert members.shape == (3, 1, 3) and embedded.shape == (3, 2, 12)  # each model's 4 columns side by side
    assert not torch.allclose(members[:, :, 0], members[:, :, 1])  # initialised apart
    torch.testing.assert_close(model.logits(dense, kjt), members.mean(dim=2))


def test_each_model_of_an_ensemble_is_fitted_on_its_own_loss():
    torch.manual_seed(0)
    model = TrainingDLRM(_config(2))
    dense, kjt = _batch()
    members, _ = model(dense, kjt)
    ratings = torch.tensor([1.0, 3.0, 5.0])
    objective = Objective()
    alone = [objective.loss(members[:, :, k], ratings) for k in range(2)]
    torch.testing.assert_close(objective.loss(members, ratings), alone[0] + alone[1])
    alone[0].backward()  # the first model's loss moves none of the second model's weights
    second = [parameter.grad for parameter in model.dlrm.members[0].parameters()]
    assert all(grad is None or not grad.any() for grad in second)
    first = [parameter.grad for parameter in model.dlrm.over_arch.parameters()]
    assert all(grad is not None for grad in first) and any(grad.any() for grad in first)


def test_one_model_keeps_the_state_dict_and_record_it_always_had():
    single = RatingDLRM(_config(1))
    assert not any(".members." in key for key in single.state_dict())
    assert "ensemble" not in single.config.to_dict()
    assert ModelConfig.from_dict(single.config.to_dict()) == single.config
    three = _config(3)
    assert (
        ModelConfig.from_dict(three.to_dict()) == three and three.table_parameters == 3 * single.config.table_parameters
    )


def test_an_ensemble_checkpoint_predicts_exports_and_resumes(dlrm, tmp_path):
    result = dlrm("train", "--name", "e", *FAST, "--ensemble", "3")
    assert result.exit_code == 0, result.output
    meta = json.loads((dlrm.store / "e" / "meta.json").read_text())
    assert meta["model"]["ensemble"] == 3 and meta["run"]["train"]["ensemble"] == 3
    predicted = dlrm("predict", "-c", "e", "--user", "4", "--items", "1,2,3", "--json")
    assert predicted.exit_code == 0, predicted.output
    for form in ("pt2", "torchscript"):  # export checks the artifact against the model before writing it
        exported = dlrm("export", "-c", "e", "--output", tmp_path / f"m.{form}", "--format", form)
        assert exported.exit_code == 0 and "Parity" in exported.output, exported.output
    resumed = dlrm("train", "--resume", "e", "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize("value", ["0", "17"])
def test_an_ensemble_size_out_of_range_is_a_usage_error(dlrm, value):
    assert_error(dlrm("train", "--ensemble", value), 2, "--ensemble")


def test_shared_biases_learn_from_an_ensemble_of_copies_as_from_one_model():
    torch.manual_seed(0)
    single = TrainingDLRM(replace(_config(1), biases=True))
    pair = TrainingDLRM(replace(_config(2), biases=True))
    state = {}
    for key, value in single.state_dict().items():  # the second model: a copy of the first
        state[key] = torch.cat([value, value], dim=1) if "sparse_arch" in key else value
        if key.startswith(("dlrm.dense_arch.", "dlrm.over_arch.")):
            state[key.replace("dlrm.", "dlrm.members.0.", 1)] = value
    pair.load_state_dict(state)
    dense, kjt = _batch()
    ratings = torch.tensor([1.0, 3.0, 5.0])
    for model in (single, pair):
        Objective().loss(model(dense, kjt)[0], ratings).backward()
    for key, parameter in pair.named_parameters():  # every weight, the shared biases too, moves as one model's
        if key in dict(single.named_parameters()):
            expected = dict(single.named_parameters())[key].grad
            got = parameter.grad[:, :4] if "sparse_arch" in key else parameter.grad
            torch.testing.assert_close(got, expected, msg=key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--embedding-dim", "6", "--ensemble", "3"], "embedding_dim gives 6 x ensemble 3 = 18; choose another"),
        (["--embedding-dim", "6", "--ensemble", "1"], "embedding_dim gives 6; choose another embedding_dim"),
        (["--embedding-dim", "2", "--ensemble", "2", "--retrieval", "ease"], "or retrieval none"),
    ],
)
def test_fused_rows_that_fbgemm_cannot_take_are_a_usage_error(dlrm, options, message):
    assert_error(dlrm("train", *TINY, *options), 2, message)


def test_an_ensemble_of_narrow_models_may_fill_fused_rows_together():
    assert TrainConfig(embedding_dim=2, ensemble=2, retrieval="none").ensemble == 2
    assert TrainConfig(embedding_dim=2, ensemble=3, embeddings="plain").ensemble == 3


def test_the_python_api_refuses_an_ensemble_the_command_line_refuses(tmp_path):
    from dlrm_cli import train

    with pytest.raises(DlrmUsageError, match="ensemble must be >= 1 and <= 16, got 17"):
        train(ensemble=17, store=tmp_path)


def test_a_model_too_large_for_memory_names_the_ensemble_among_its_sizes(dlrm):
    result = dlrm("train", *TINY, "--bottom-mlp", "100000000", "--ensemble", "2")
    assert_error(
        result, 2, "choose a smaller --embedding-dim, --bottom-mlp, --top-mlp or --ensemble", after_progress=True
    )


def test_a_record_whose_run_and_model_differ_in_ensemble_is_damaged():
    meta = upgrade_meta(json.loads(FORMAT1_META.read_text()))
    assert record_problem(meta) is None
    meta["run"]["train"]["ensemble"] = 2
    assert record_problem(meta) == "meta.json is damaged (the run's ensemble 2 does not match its model's 1)"
