"""The command line answers fast, explains itself, and reports usage errors in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import assert_error


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dlrm_cli.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['train', '--epochs', '0'])\n"
        "assert r.exit_code == 2, r.output\n"
        "r = CliRunner().invoke(app, ['predict', '--user', '1', '--items', '1,,2'])\n"
        "assert r.exit_code == 2, r.output\n"
        "print(sorted(m for m in ('torch', 'torchrec', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "dlrm_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "predict" in out.stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "checkpoints"])
def test_every_help_shows_an_example(dlrm, command):
    result = dlrm(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example: dlrm " + command in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
        (["train", "--epochs", "-3"], "Invalid value for '--epochs'"),
        (["train", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["train", "--lr", "0"], "Invalid value for '--lr': 0.0 is not a positive number"),
        (["train", "--lr", "abc"], "Invalid value for '--lr'"),
        (["train", "--lr-gamma", "1.5"], "Invalid value for '--lr-gamma'"),
        (["train", "--embedding-dim", "0"], "Invalid value for '--embedding-dim'"),
        (["train", "--users", "0"], "Invalid value for '--users'"),
        (["train", "--name", "bad/name"], "invalid checkpoint name 'bad/name'"),
        (["train", "--name", "latest"], "invalid checkpoint name 'latest'"),
        (["train", "--data", "nonsense"], "--data must be synthetic, movielens:DIR or csv:FILE, got 'nonsense'"),
        (["train", "--device", "tpu"], "Invalid value for '--device'"),
        (["train", "--no-such-option"], "No such option"),
        (["evaluate", "--split", "train"], "--split must be one of test, validation, got 'train'"),
        (["predict", "--user", "1", "--items", "101,,x"], "--items must be a comma-separated list"),
        (["predict", "--user", "1", "--items", ""], "--items must be a comma-separated list"),
        (["predict", "--user", "1", "--items", "5,5"], "--items lists '5' more than once"),
        (["predict", "--items", "5"], "Missing option '--user'"),
        (["export", "--output", "/no/such/folder/m.pt"], "--output folder /no/such/folder does not exist"),
        (["export", "--output", "m.pt", "--format", "onnx"], "--format must be one of torchscript, pt2"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(dlrm, args, message):
    assert_error(dlrm(*args), 2, message)


def test_empty_store_is_a_usage_error_as_an_unknown_name_is(dlrm):
    for args in (
        ["evaluate"],
        ["predict", "--user", "1", "--items", "2"],
        ["export", "--output", "m.pt"],
        ["checkpoints", "show", "latest"],
        ["recommend", "--checkpoint", "best", "--user", "1"],
    ):
        assert_error(dlrm(*args), 2, "no checkpoints in")
    assert not dlrm.store.exists()


def test_unknown_checkpoint_in_empty_store(dlrm):
    assert_error(dlrm("evaluate", "--checkpoint", "nope"), 2, "no checkpoint named 'nope': the store")


def test_store_that_is_a_file(dlrm, tmp_path):
    dlrm.store = tmp_path / "file"
    dlrm.store.write_text("x")
    assert_error(dlrm("checkpoints"), 2, "is not a folder")
    assert_error(dlrm("train", "--epochs", "1"), 2, "is not a folder")
    assert dlrm.store.read_text() == "x"


def test_empty_store_lists_nothing(dlrm):
    result = dlrm("checkpoints", "--json")
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.stdout)["checkpoints"] == []


def test_shell_completion_completes_commands_and_options():
    env = {**os.environ, "_DLRM_COMPLETE": "complete_bash", "COMP_WORDS": "dlrm train --emb", "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-m", "dlrm_cli"], env=env, capture_output=True, text=True)
    assert {"--embedding-dim", "--embeddings", "--embedding-l2"} <= set(out.stdout.split())
