"""Hostile use: what a red-team pass found, each case with the behaviour that rules it out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, Dlrm, assert_error, dead_pid, snapshot, tiny_request

from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.store.checkpoints import CheckpointStore
from dlrm_cli.training.run import train

ROOT = Path(__file__).resolve().parents[1]


# Two runs, one name --------------------------------------------------------------------------------


def test_a_name_is_claimed_by_one_live_process_at_a_time(tmp_path):
    store = CheckpointStore(tmp_path)
    store.claim("run")
    store.claim("run")  # again, by the same process: still ours
    assert store.holder("run") == os.getpid() and store.busy("run") is None
    os.replace(tmp_path / ".claim-run", tmp_path / ".mine")
    os.symlink(str(os.getppid()), tmp_path / ".claim-run")  # a live process holds it
    with pytest.raises(
        DlrmUsageError, match=f"checkpoint run is being written by another training run \\(process {os.getppid()}\\)"
    ):
        store.claim("run")
    assert store.busy("run") == os.getppid()
    store.release("run")  # not ours: left alone
    assert store.holder("run") == os.getppid()
    (tmp_path / ".claim-run").unlink()
    os.symlink(str(dead_pid()), tmp_path / ".claim-run")  # its process was killed
    store.claim("run")
    assert store.holder("run") == os.getpid()
    store.release("run")
    assert not (tmp_path / ".claim-run").is_symlink()


def test_a_stale_claim_is_cleared_when_the_store_is_read(tmp_path):
    os.symlink(str(dead_pid()), tmp_path / ".claim-gone")
    assert CheckpointStore(tmp_path).infos() == []
    assert not os.path.lexists(tmp_path / ".claim-gone")


def test_a_run_does_not_replace_a_checkpoint_that_appeared_after_it_was_prepared(tmp_path):
    store = tmp_path / "store"
    request = tiny_request(store, name="same", epochs=1)
    train(tiny_request(store, name="same", epochs=1))  # the other run got there first
    before = snapshot(store)
    with pytest.raises(DlrmUsageError, match="checkpoint same already exists"):
        train(request)  # prepared before the other run finished: it must not swap over it
    assert snapshot(store) == before


@pytest.mark.slow
def test_two_runs_started_together_with_one_name_one_wins_and_the_other_exits_2(tmp_path):
    store = tmp_path / "store"
    command = [sys.executable, "-m", "dlrm_cli", "train", *TINY, "--epochs", "2", "--name", "same"]
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
    runs = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = sorted((run.wait(), run.stderr.read()) for run in runs)
    (won, _), (lost, error) = outcomes
    assert (won, lost) == (0, 2), outcomes
    lines = [line for line in error.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: checkpoint same "), error
    assert "being written by another training run" in lines[0] or "already exists" in lines[0]
    listing = json.loads(Dlrm(store)("checkpoints", "--json").stdout)["checkpoints"]
    assert [(row["name"], row["complete"], row["problem"]) for row in listing] == [("same", True, None)]
    assert not [path.name for path in store.iterdir() if path.name.startswith(".")]


def test_a_checkpoint_in_training_cannot_be_removed_or_pruned(trained):
    os.symlink(str(os.getppid()), trained.store / ".claim-tiny")  # as a live run holds it
    assert_error(
        trained("checkpoints", "rm", "tiny", "--force"),
        2,
        f"checkpoint tiny is being trained by process {os.getppid()}; stop that run before removing it",
    )
    pruned = trained("checkpoints", "prune", "--keep", "0", "--force")
    assert pruned.exit_code == 0, pruned.output
    assert "Kept tiny (training): a run is training it" in pruned.stderr
    assert (trained.store / "tiny" / "meta.json").is_file()


# Writes outside the store ----------------------------------------------------------------------------


def test_export_refuses_an_existing_file_unless_forced_and_then_replaces_it_whole(trained, tmp_path):
    output = tmp_path / "model.pt"
    output.write_bytes(b"the user's own file")
    assert_error(
        trained("export", "--output", output), 2, f"--output {output} already exists; pass --force to replace it"
    )
    assert output.read_bytes() == b"the user's own file"
    sidecar = tmp_path / "model.pt.json"
    output.unlink()
    sidecar.write_text("{}")  # the description's name is taken: refused as well, before any work
    assert_error(trained("export", "--output", output), 2, f"--output {sidecar} already exists")
    assert not output.exists() and sidecar.read_text() == "{}"
    result = trained("export", "--output", output, "--force", "--json")
    assert result.exit_code == 0, result.output
    assert output.stat().st_size > 1000 and json.loads(sidecar.read_text())["checkpoint"] == "tiny"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_never_writes_through_a_link_or_into_a_special_file(trained, tmp_path, force):
    target = tmp_path / "elsewhere.pt"
    target.write_bytes(b"not to be touched")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    assert_error(trained("export", "--output", link, *force), 2, f"--output {link} is a symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"not to be touched"
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert_error(trained("export", "--output", fifo, *force), 2, "is a device or other special file")
    assert_error(trained("export", "--output", "/dev/null", *force), 2, "--output /dev/null is a device")
    assert not os.path.lexists("/dev/null.json")


def test_report_follows_the_same_rule(trained, tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "report.html"
    output.write_text("mine")
    assert_error(trained("report", "--output", output), 2, "already exists; pass --force to replace it")
    assert output.read_text() == "mine"
    result = trained("report", "--output", output, "--force")
    assert result.exit_code == 0, result.output
    assert output.read_text().startswith("<!doctype html>")


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 truncated zip", b"\x93NUMPY garbage"])
def test_a_damaged_parse_cache_entry_is_parsed_again(dlrm, tmp_path, private_cache, damage):
    from fixtures import write_ml1m

    folder = write_ml1m(tmp_path / "ml")
    args = ["--data", f"movielens:{folder}", "--epochs", "1", "--embedding-dim", "8"]
    assert dlrm("train", *args, "--name", "first").exit_code == 0
    [entry] = list(private_cache.glob("*.npz"))
    entry.write_bytes(damage)
    result = dlrm("train", *args, "--name", "second")
    assert result.exit_code == 0, result.output
    assert entry.stat().st_size > 1000  # parsed again and replaced


# Ctrl-C twice while a checkpoint is written ------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_twice_during_a_save_keeps_the_epoch_and_says_so(tmp_path):
    store = tmp_path / "store"
    writer = [sys.executable, str(ROOT / "tests" / "fault_writer.py"), str(store), "run", "interrupt", "2"]
    process = subprocess.run(writer, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 130, process.stderr
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: interrupted by SIGINT; epoch 2 is saved as run (incomplete)"), process.stderr
    meta = json.loads((store / "run" / "meta.json").read_text())
    assert (meta["epochs_done"], meta["complete"]) == (2, False)
    assert not [path.name for path in store.iterdir() if path.name.startswith(".")]


# Store operations on a store that cannot be written ---------------------------------------------------


def test_rm_and_prune_on_a_store_that_cannot_be_written_say_so_in_one_line(trained, monkeypatch):
    from dlrm_cli.store import checkpoints as store_module

    assert trained("train", "--epochs", "1", "--name", "second", *TINY).exit_code == 0
    before = snapshot(trained.store)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module.os, "rename", refuse)  # as on a read-only store (root ignores modes)
    message = f"cannot remove checkpoint tiny from {trained.store}: Permission denied"
    assert_error(trained("checkpoints", "rm", "tiny", "--force"), 2, message)
    assert_error(trained("checkpoints", "prune", "--keep", "1", "--force"), 2, message)
    assert snapshot(trained.store) == before


# Ratings outside the scale ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "outside"),
    [
        ("-3", "this checkpoint's rating scale, 1 to 5"),
        ("7", "this checkpoint's rating scale, 1 to 5"),
        ("1e308", "±1e+15, the range dlrm's float32 arithmetic can train on"),
    ],
)
def test_evaluate_refuses_ratings_outside_the_checkpoints_scale_naming_the_line(dlrm, tmp_path, value, outside):
    from fixtures import write_ml1m

    folder = write_ml1m(tmp_path / "ml")
    assert dlrm("train", "--data", f"movielens:{folder}", "--epochs", "1", "--embedding-dim", "8").exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text(f"user,item,rating\n1,1,4\n2,3,{value}\n")
    assert_error(
        dlrm("evaluate", "--data", f"csv:{other}"),
        1,
        f"{other}: line 3: rating {float(value):g} is outside {outside}",
    )


def test_training_refuses_a_rating_beyond_what_float32_can_train_on(dlrm, tmp_path):
    data = tmp_path / "huge.csv"
    data.write_text("user,item,rating\n1,1,4\n2,2,3\n3,1,1e308\n")
    assert_error(
        dlrm("train", "--data", f"csv:{data}", "--epochs", "1"),
        1,
        f"{data}: line 4: rating 1e+308 is outside ±1e+15, the range dlrm's float32 arithmetic can train on",
    )


# Data files that are subtly wrong ----------------------------------------------------------------------


def _train_csv(dlrm, path: Path, *columns: str):
    return dlrm("train", "--data", f"csv:{path}", *columns, "--epochs", "1")


def test_line_numbers_count_the_line_breaks_inside_quoted_fields(dlrm, tmp_path):
    data = tmp_path / "notes.csv"
    data.write_text('user,item,rating,note\n1,1,4,"two\nlines"\n2,2,3,plain\n3,1,abc,plain\n')
    assert_error(
        _train_csv(dlrm, data, "--sparse-cols", "note"), 1, f"{data}: line 5: rating is 'abc', not a finite number"
    )


def test_text_that_is_not_utf8_is_named_by_line(dlrm, tmp_path):
    data = tmp_path / "latin.csv"
    data.write_bytes(b"user,item,rating\n1,1,4\n2,caf\xe9,3\n")
    assert_error(_train_csv(dlrm, data), 1, f"{data}: line 3: not utf-8 text")


def test_a_column_named_twice_in_the_header_is_refused(dlrm, tmp_path):
    data = tmp_path / "twice.csv"
    data.write_text("user,item,rating,rating\n1,1,4,5\n2,2,3,1\n")
    assert_error(_train_csv(dlrm, data), 1, f"{data}: line 1: column 'rating' appears more than once in the header")


def test_a_users_dat_row_with_fields_missing_is_refused(dlrm, tmp_path):
    from fixtures import write_ml1m

    folder = write_ml1m(tmp_path / "ml")
    lines = (folder / "users.dat").read_text().splitlines()
    (folder / "users.dat").write_text("\n".join([*lines, "9999::M"]) + "\n")
    assert_error(
        dlrm("train", "--data", f"movielens:{folder}", "--epochs", "1"),
        1,
        f"{folder / 'users.dat'}: line {len(lines) + 1}: age is missing",
    )


def test_ids_with_spaces_around_them_are_reachable_from_the_command_line(dlrm, tmp_path):
    data = tmp_path / "spaced.csv"
    rows = [f"{' u' if k % 2 else 'u'}{k % 7},  item{k % 5} ,{1 + k % 5}" for k in range(200)]
    data.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    assert _train_csv(dlrm, data).exit_code == 0
    result = dlrm("predict", "--user", "u3", "--items", "item1, item2", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert not answer["user_unseen_in_training"]
    assert sorted((row["item"], row["unseen_in_training"]) for row in answer["items"]) == [
        ("item1", False),
        ("item2", False),
    ]


# Command-line rough edges -------------------------------------------------------------------------------


def test_items_can_come_from_a_file_too_long_for_the_command_line(trained, tmp_path):
    ids = tmp_path / "items.txt"
    ids.write_text("\n".join(str(i) for i in range(150)) + "\n\n")  # every item of the tiny data, one a line
    result = trained("predict", "--user", "1", "--items", f"@{ids}", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["items"]) == 150
    assert_error(trained("predict", "--user", "1", "--items", f"@{tmp_path / 'none.txt'}"), 2, "no such file")
    (tmp_path / "empty.txt").write_text("\n")
    assert_error(trained("predict", "--user", "1", "--items", f"@{tmp_path / 'empty.txt'}"), 2, "holds no ids")
    ids.write_text("1\n2\n1\n")
    assert_error(trained("predict", "--user", "1", "--items", f"@{ids}"), 2, "--items lists '1' more than once")


def test_recommend_says_so_when_excluding_seen_items_leaves_nothing(dlrm, tmp_path):
    data = tmp_path / "small.csv"
    rows = [f"u{k % 3},i{k % 4},{1 + k % 5}" for k in range(120)]  # every user rates every item
    data.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    assert _train_csv(dlrm, data, "--split", "random:0.01").exit_code == 0
    assert_error(
        dlrm("recommend", "--user", "u1", "--exclude-seen"),
        1,
        "nothing to recommend: user u1 rated every one of the 4 items this checkpoint knows",
    )


def test_resuming_on_changed_data_gives_advice_that_works(dlrm, tmp_path):
    from fixtures import write_ml1m

    folder = write_ml1m(tmp_path / "ml")
    args = ["--data", f"movielens:{folder}", "--epochs", "3", "--embedding-dim", "8", "--name", "run"]
    assert dlrm("train", *args).exit_code == 0
    meta = tmp_path / "store" / "run" / "meta.json"
    assert json.loads(meta.read_text())["complete"]
    with (folder / "ratings.dat").open("a") as handle:
        handle.write("1::2::3::978300760\n")
    result = dlrm("train", "--resume", "run", "--epochs", "4")
    assert_error(result, 1, "has changed since checkpoint run was trained, and a run resumes only on the data")
    assert "--data" not in result.stderr


def test_a_checkpoint_whose_metadata_claims_a_model_too_big_for_memory_is_refused_before_allocating(
    trained, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    from dlrm_cli.store.checkpoints import _meta_digest

    path = trained.store / "tiny" / "meta.json"
    meta = json.loads(path.read_text())
    # an edit that keeps meta.json's checksum right (the run record agrees, so only the size is wrong)
    meta["model"]["top_mlp"] = meta["run"]["train"]["top_mlp"] = [2_000_000_000, 16]
    meta["meta_sha256"] = _meta_digest(meta)
    path.write_text(json.dumps(meta))
    for command in (["evaluate"], ["predict", "--user", "1", "--items", "1"], ["export", "--output", "m.pt"]):
        assert_error(trained(*command), 1, "checkpoint tiny is corrupt: bad model settings (a model of")


# What any client can send to dlrm serve -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(trained_store, tmp_path_factory):
    """The service over a copy of the trained store, in this process (tests/test_serve_faults.py)."""
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from test_serve_faults import LiveServer

    store = tmp_path_factory.mktemp("served") / "store"
    shutil.copytree(trained_store, store)
    server = LiveServer(store, "tiny").wait_ready()
    yield server
    server.stop()


LONG = b"9" * 5000  # more digits than Python reads as an integer
HOSTILE_BODIES = [
    ("/predict", b'{"user": 9223372036854775808, "items": [1]}', 422, "user: an integer id must fit in 64 bits"),
    ("/predict", b'{"user": 1, "items": [1, -9223372036854775809]}', 422, "items.1: an integer id must fit in 64 bits"),
    ("/predict", b'{"user": 100000000000000000000000000, "items": [1]}', 422, "user: an integer id must fit in 64"),
    ("/predict", b'{"user": 1, "items": [1e26]}', 422, "items.0: an id must be an integer or a string"),
    ("/predict", b'{"user": "100000000000000000000000000", "items": [1]}', 422, "unknown user id '1000000000"),
    ("/recommend", b'{"user": "\\ud800", "top": 3}', 422, "user: an id must be valid Unicode text"),
    ("/predict", b'{"user": 1, "items": ["\\udfff"]}', 422, "items.0: an id must be valid Unicode text"),
    ("/predict", b'{"user": 1, "items": [1], "\\ud800": 1}', 422, "a field name must be valid Unicode text"),
    ("/predict", b"", 400, "the body is empty: send a JSON object"),
    ("/predict", b"[" * 100_000 + b"]" * 100_000, 400, "the body is not valid JSON: it is nested too deeply"),
    ("/predict", b'{"user": ' + LONG + b', "items": [1]}', 400, "it holds a number too long to read"),
    ("/predict", b'{"user": {"id": 1}, "items": [1]}', 422, "user: an id must be an integer or a string"),
    ("/predict", b'{"user": 1, "items": [[1]]}', 422, "items.0: an id must be an integer or a string"),
    ("/predict", b"null", 422, "the body must be a JSON object"),
    ("/recommend", b'{"user": 1, "top": "5"}', 422, "top: Input should be a valid integer"),
    ("/recommend", b'{"user": 1, "top": 0}', 422, "top: Input should be greater than or equal to 1"),
    ("/recommend", b'{"user": 1, "exclude_seen": "maybe"}', 422, "exclude_seen: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("path", "content", "status", "message"), HOSTILE_BODIES)
def test_a_hostile_body_gets_its_json_4xx_and_harms_no_one(served, path, content, status, message):
    response = served.send(path, content)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"] and message in response.json()["error"], response.text
    good = served.post("/predict", {"user": 1, "items": [1, 2]})
    assert good.status_code == 200 and good.json()["user"] == "1"


def test_a_request_that_is_not_http_gets_a_json_400(served):
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as connection:
        connection.sendall(b"\x00\x01 not http at all\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):  # the server closes the connection after answering
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"error": "the request is not valid HTTP"}


@pytest.mark.slow
def test_a_ranking_only_checkpoint_swapped_in_under_load_is_served_and_drops_no_request(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import threading

    from test_serve_faults import LiveServer, train_movielens

    store, data = tmp_path / "store", tmp_path / "ml"
    train_movielens(store, data, "rater", "rating")  # ratings 1 to 5, which a ranking head's scores are not
    server = LiveServer(store, "latest", watch=0.1).wait_ready()
    stop, answers = threading.Event(), []

    def load() -> None:
        user = 0
        while not stop.is_set():
            user = user % 60 + 1
            answers.append(server.post("/predict", {"user": user, "items": [1, 2, 3]}))

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        server.wait_for(lambda: len(answers) > 10, "answers from the first checkpoint")
        train_movielens(store, data, "ranker", "ranking")
        server.wait_for(lambda: server.state.reloads or server.state.refused, "the new checkpoint's verdict")
        count = len(answers)
        server.wait_for(lambda: len(answers) > count + 10, "answers from the new checkpoint")
    finally:
        stop.set()
        for client in clients:
            client.join()
        server.stop()
    assert server.state.refused == [] and server.state.reloads >= 1
    assert [r.status_code for r in answers] == [200] * len(answers), {r.text for r in answers if r.status_code != 200}
    names = [r.json()["checkpoint"] for r in answers]
    assert names[0] == "rater" and names[-1] == "ranker" and names == sorted(names, key=lambda n: n == "ranker")
    assert "score" in answers[-1].json()["items"][0] and "rating" not in answers[-1].json()["items"][0]
