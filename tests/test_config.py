"""One configuration model: the options read their defaults from it, presets name real settings, a run's
record and its TOML form round-trip, and format-1 metadata becomes one run record."""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum
from pathlib import Path

import pytest
from conftest import assert_error
from fixtures import write_generic_csv
from typer.main import get_command

from dlrm_cli.cli.main import app
from dlrm_cli.cli.options import SYNTHETIC_SIZES, comma_joined
from dlrm_cli.config import PRESETS, CsvColumns, FileSource, RunConfig, SyntheticSpec, TrainConfig
from dlrm_cli.store.checkpoints import upgrade_meta

FORMAT1 = Path(__file__).parent / "data" / "format1" / "store"


def test_train_options_take_their_defaults_from_the_config():
    params = {param.name: param.default for param in get_command(app).commands["train"].params}
    for field in fields(TrainConfig):
        default = params[field.name]
        default = default.value if isinstance(default, Enum) else default
        expected = comma_joined(field.default) if isinstance(field.default, tuple) else field.default
        assert default == expected, field.name
    for name in SYNTHETIC_SIZES:
        assert params[name] == getattr(SyntheticSpec(), name), name


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_presets_name_real_settings_with_valid_values(kind):
    TrainConfig(**PRESETS[kind])  # an unknown field or a bad value raises


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(TrainConfig(epochs=3, bottom_mlp=(64,), patience=2), SyntheticSpec(users=10, seed=4)),
        RunConfig(
            TrainConfig(),
            FileSource(
                "csv", "/data/shop.csv", "files:a.csv,b.csv", files=("/data/a.csv", "/data/b.csv"),
                columns=CsvColumns(user="customer", dense=("price",), rating_range=(1.0, 5.0)), fingerprint="ab12",
            ),
        ),
    ],
)  # fmt: skip
def test_run_records_round_trip_through_json(config):
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bad_settings_raise_value_error_naming_the_value():
    with pytest.raises(ValueError, match="sparse_optimizer must be one of rowwise_adagrad, adagrad, sgd, got 'adam'"):
        TrainConfig(sparse_optimizer="adam")
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1, got 0"):
        TrainConfig(checkpoint_every=0)


def test_print_config_of_csv_data_reads_back_to_the_same_run(dlrm, tmp_path):
    path = write_generic_csv(tmp_path / "shop.csv")
    args = [
        "--data", f"csv:{path}", "--user-col", "customer", "--item-col", "sku", "--rating-col", "stars",
        "--dense-cols", "price", "--sparse-cols", "brand,tags", "--rating-range", "1,5", "--split", "temporal:0.2",
    ]  # fmt: skip
    first = dlrm("train", *args, "--lr", "0.01", "--print-config")
    assert first.exit_code == 0, first.output
    assert 'sparse-cols = "brand,tags"\n' in first.stdout and 'rating-range = "1.0,5.0"\n' in first.stdout
    assert "users" not in first.stdout  # synthetic sizes belong to synthetic data
    (tmp_path / "run.toml").write_text(first.stdout)
    again = dlrm("train", "--config", tmp_path / "run.toml", "--print-config")
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout


def test_synthetic_sizes_with_other_data_are_refused_from_a_file_too(dlrm, tmp_path):
    (tmp_path / "run.toml").write_text(f'data = "movielens:{tmp_path}"\nusers = 10\n')
    assert_error(dlrm("train", "--config", tmp_path / "run.toml"), 2, "--users applies only to --data synthetic")


def test_format_1_metadata_becomes_one_run_record():
    old = json.loads((FORMAT1 / "format1-csv" / "meta.json").read_text())
    new = upgrade_meta(old)
    assert {"train", "options", "data"}.isdisjoint(new) and "train" in old
    assert new["run"]["data"] == old["data"]
    checkpoint_every = old["options"]["checkpoint_every"]
    upgraded = {"checkpoint_every": checkpoint_every, "bags": False, "biases": False, "retrieval": "none"}
    assert new["run"]["train"] == {**old["train"], **upgraded}  # a checkpoint before format 5 has one stage
    config = RunConfig.from_dict(new["run"])
    assert config.data.columns == CsvColumns(
        user="customer", item="sku", rating="stars", dense=("price",), sparse=("brand",)
    )
    assert config.train.bottom_mlp == (8,)
