"""--ensemble: several models trained side by side in one checkpoint, each on its own loss, predicting their mean."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, assert_error
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig, TableConfig
from dlrm_cli.model.dlrm import RatingDLRM, TrainingDLRM
from dlrm_cli.training.run import Objective

FAST = ["--epochs", "2", *TINY]


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
    assert ModelConfig.from_dict(three.to_dict()) == three and three.table_parameters == 3 * single.config.table_parameters


def test_an_ensemble_checkpoint_predicts_exports_and_resumes(dlrm, tmp_path):
    result = dlrm("train", "--name", "e", "--ensemble", "3", *FAST)
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
