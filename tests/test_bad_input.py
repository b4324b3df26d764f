"""The bad-input matrix: every command, every kind of bad value. One line on stderr, the documented exit
code, no traceback, and the store exactly as it was."""

from __future__ import annotations

import os

import pytest
from conftest import TINY, assert_error, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HUGE = "1" + "0" * 15
MATRIX = [
    # train: empty, negative, zero, huge, non-numeric, duplicate
    (["train", "--epochs", ""], 2, "Invalid value for '--epochs'"),
    (["train", "--batch-size", "-5"], 2, "Invalid value for '--batch-size'"),
    (["train", "--lr-step", "0"], 2, "Invalid value for '--lr-step'"),
    (["train", "--users", HUGE, *TINY[2:]], 2, "more than half of this machine's memory"),
    (["train", "--embedding-dim", "100000000", *TINY[:6]], 2, "would need about"),
    (["train", "--top-mlp", "300000,300000", *TINY], 2, "MLP parameters would need about"),
    (["train", "--bottom-mlp", "1000000000", *TINY], 2, "choose a smaller --embedding-dim, --bottom-mlp or --top-mlp"),
    (["train", "--name", "tiny", *TINY], 2, "checkpoint tiny already exists"),
    (["train", "--seed", "abc"], 2, "Invalid value for '--seed'"),
    (["train", "--name", ""], 2, "invalid checkpoint name ''"),
    (["train", "--val-fraction", "0.9"], 2, "Invalid value for '--val-fraction'"),
    (["train", "--top-mlp", ""], 2, "--top-mlp must be comma-separated positive layer sizes"),
    (["train", "--bottom-mlp", "64,-1"], 2, "--bottom-mlp must be comma-separated positive layer sizes"),
    (["train", "--dense-cols", "a,a", "--data", "csv:x.csv"], 2, "--dense-cols lists 'a' more than once"),
    (["train", "--data", "movielens:"], 2, "--data movielens: needs a path"),
    (["train", "--data", "movielens:/etc/hostname"], 1, "must be a folder holding a MovieLens release"),
    (["train", "--data", "csv:/etc"], 1, "is a folder; give the file"),
    (["train", "--data", "csv:/etc/hostname", "--user-col", "u"], 1, "no column named"),
    (["train", "--resume", "tiny", "--epochs", "-1"], 2, "Invalid value for '--epochs'"),
    (["train", "--config", "/etc"], 2, "is a folder, not a TOML file"),
    # evaluate
    (["evaluate", "--checkpoint", ""], 2, "no checkpoint named ''"),
    (["evaluate", "--split", ""], 2, "--split must be one of test, validation"),
    (["evaluate", "--data", "csv:/no/such.csv"], 1, "/no/such.csv does not exist"),
    (["evaluate", "--device", "gpu"], 2, "Invalid value for '--device'"),
    (["evaluate", "--k", "151"], 2, "--k 151 is more than the 150 items checkpoint tiny can rank; give at most 150"),
    (["evaluate", "--k", f"10,{HUGE}"], 2, f"--k {HUGE} is more than the 150 items"),
    # predict / recommend
    (["predict", "--user", "", "--items", "1"], 2, "--user must not be empty"),
    (["predict", "--user", "1", "--items", ","], 2, "--items must be a comma-separated list"),
    (["predict", "--user", "1", "--items", "-1"], 2, "unknown item id '-1'"),
    (["predict", "--user", "-1", "--items", "1"], 2, "unknown user id '-1'"),
    (["predict", "--user", HUGE, "--items", "1"], 2, f"unknown user id '{HUGE}'"),
    (["predict", "--user", "1", "--items", "1,2,1"], 2, "--items lists '1' more than once"),
    (["predict", "--user", "1", "--items", "@/no/such/ids.txt"], 2, "--items @/no/such/ids.txt: no such file"),
    (["predict", "--user", "1", "--items", "@/etc"], 2, "is a folder; give a file of ids"),
    (["recommend", "--user", "1", "--top", "-3"], 2, "Invalid value for '--top'"),
    (["recommend", "--user", "1", "--top", "x"], 2, "Invalid value for '--top'"),
    # export / report: missing folders, folders as files, unwritable places
    (["export", "--output", ""], 2, "is a folder; give a file path"),
    (["export", "--output", "/nonexistent/dir/m.pt"], 2, "--output folder /nonexistent/dir does not exist"),
    (["export", "--output", "/proc/dlrm-model.pt"], 1, "cannot write /proc/dlrm-model.pt"),
    (["export", "--output", "m.pt", "--format", ""], 2, "--format must be one of torchscript, pt2"),
    (["export", "--output", "m.pt", "--quantize", "int4"], 2, "--quantize takes int8, got 'int4'"),
    (["export", "--output", "m.pt", "--quantize", "int8", "--format", "pt2"], 2, "leave out --format pt2"),
    (["report", "--output", "/proc/dlrm-report.png"], 1, "cannot write /proc/dlrm-report.png"),
    (["export", "--output", "/dev/full"], 2, "--output /dev/full is a device or other special file"),
    (["export", "--output", "/dev/null", "--force"], 2, "--output /dev/null is a device or other special file"),
    (["export", "--output", "/etc/hostname"], 2, "--output /etc/hostname already exists; pass --force"),
    (["export", "--output", "m.pt2", "--inputs", "rows"], 2, "--inputs must be one of ids, features"),
    # serve (each refused before it listens)
    (["serve", "--port", "70000"], 2, "Invalid value for '--port'"),
    (["serve", "--max-batch", "0"], 2, "Invalid value for '--max-batch'"),
    (["serve", "--max-wait-ms", "-1"], 2, "Invalid value for '--max-wait-ms'"),
    (["serve", "--checkpoint", "nope"], 2, "no checkpoint named 'nope'"),
    (["serve", "--host", "256.1.1.1", "--port", "0"], 2, "cannot listen on 256.1.1.1:0"),
    # checkpoints
    (["checkpoints", "rm"], 2, "Missing argument"),
    (["checkpoints", "rm", "nope"], 2, "no checkpoint named 'nope'"),
    (["checkpoints", "rm", "latest"], 2, "the aliases latest and best are not accepted here"),
    (["checkpoints", "prune", "--keep", "-1"], 2, "Invalid value for '--keep'"),
    (["checkpoints", "show", "nope"], 2, "no checkpoint named 'nope'"),
    # benchmark
    (["benchmark", "--rows", "0"], 2, "Invalid value for '--rows'"),
    (["benchmark", "--rows", HUGE], 2, "more than half of this machine's memory"),
    (["benchmark", "--eval-ratings", HUGE], 2, "Invalid value for '--eval-ratings'"),
    (["benchmark", "--paths", ""], 2, "--paths must be a comma-separated list"),
]


@pytest.mark.parametrize(("args", "code", "message"), MATRIX, ids=[" ".join(a)[:60] for a, _, _ in MATRIX])
def test_bad_input_matrix(trained, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    before = snapshot(trained.store)
    assert_error(trained(*args), code, message, after_progress=args[0] == "train")
    assert snapshot(trained.store) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes regardless of permissions")
def test_unreadable_data_and_read_only_output(trained, tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n1,2,3\n")
    data.chmod(0)
    assert_error(trained("train", "--data", f"csv:{data}"), 1, "cannot read")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    assert_error(trained("export", "--output", folder / "m.pt"), 2, "is not writable")


VALUES = st.one_of(
    st.sampled_from(["", "-1", "0", "1", "3", "abc", "nan", "inf", "1e309", "1,,2", "x" * 200, HUGE, "latest", "/"]),
    st.integers(-3, 4).map(str),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
)
OPTIONS = {
    "train": ["--epochs", "--lr", "--seed", "--name", "--data", "--split", "--embeddings", "--patience", "--dropout"],
    "evaluate": ["--checkpoint", "--split", "--data", "--device"],
    "predict": ["--user", "--items", "--checkpoint"],
    "recommend": ["--user", "--top", "--checkpoint"],
    "checkpoints": ["--json", "--store"],
}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_random_arguments_never_produce_a_traceback(trained, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(pairs=st.lists(st.tuples(st.sampled_from(OPTIONS[command]), VALUES), max_size=4))
    def run(pairs):
        args = [command]
        if command == "train":  # keep any accidental success tiny
            args += [*TINY, "--epochs", "1", "--store", str(tmp_path / "scratch")]
        for option, value in pairs:
            args += [option] if option == "--json" else [option, value]
        result = trained(*args)
        assert isinstance(result.exception, (SystemExit, type(None))), (args, repr(result.exception))
        assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
        assert "Traceback" not in result.output
        if result.exit_code:
            assert result.stderr.strip().splitlines()[-1].startswith("Error: "), (args, result.stderr)

    run()
