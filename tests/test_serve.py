"""`dlrm serve` over real HTTP: answers, bad requests, concurrency, hot reload under load, SIGTERM; and the
micro-batcher on its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY, Dlrm

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

DLRM = [sys.executable, "-m", "dlrm_cli"]
JSON = {"content-type": "application/json"}


class Server:
    """``dlrm serve --port 0`` in a subprocess; its address is read from the line it prints."""

    def __init__(self, store: Path, *args: str, program: list[str] = DLRM) -> None:
        env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
        command = [*program, "serve", "--port", "0", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.url = ""
        assert self.process.stderr is not None
        for line in self.process.stderr:  # the first line names the address
            self.lines.append(line)
            if found := re.search(r"http://127\.0\.0\.1:(\d+)", line):
                self.url = f"http://127.0.0.1:{found.group(1)}"
                break
        assert self.url, "".join(self.lines)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.lines)
            if self.client.get("/readyz").status_code == 200:
                return self
            time.sleep(0.05)
        raise AssertionError("never ready: " + "".join(self.lines))

    def wait_for(self, condition, what: str, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: " + "".join(self.lines))

    def post(self, path: str, body: object) -> httpx.Response:
        return self.client.post(path, json=body)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=10)
        self.client.close()
        return code


@pytest.fixture(scope="module")
def server(trained_store: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("serve") / "store"
    shutil.copytree(trained_store, store)
    running = Server(store, "--max-items", "50").wait_ready()
    yield running
    assert running.stop() == 0


def _cli(store: Path, *args: str) -> dict:
    result = Dlrm(store)(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _same_ranking(served: dict, printed: dict) -> None:
    assert [e["item"] for e in served["items"]] == [e["item"] for e in printed["items"]]
    for a, b in zip(served["items"], printed["items"], strict=True):
        assert a["rating"] == pytest.approx(b["rating"], abs=1e-5)  # batches of other sizes round differently
        assert a["stars"] == b["stars"] and a["unseen_in_training"] == b["unseen_in_training"]


@pytest.mark.slow
def test_serve_answers_as_the_command_line_does(server, trained_store):
    response = server.post("/predict", {"user": 42, "items": [101, 102, 3]})
    assert response.status_code == 200, response.text
    _same_ranking(response.json(), _cli(trained_store, "predict", "--user", "42", "--items", "101,102,3"))
    response = server.post("/recommend", {"user": "42", "top": 5})
    assert response.status_code == 200, response.text
    printed = _cli(trained_store, "recommend", "--user", "42", "--top", "5")
    _same_ranking(response.json(), printed)
    assert response.json()["exclude_seen"] is True and response.json()["scored"] == printed["scored"]
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz").json()
    assert ready["ready"] is True and ready["checkpoint"] == "tiny"
    model = server.client.get("/model").json()
    assert model["checkpoint"] == "tiny" and model["metrics"]["validation"]["rmse"] > 0
    schema = server.client.get("/openapi.json").json()
    assert {"/predict", "/recommend", "/healthz", "/readyz", "/model"} <= set(schema["paths"])


BAD = [
    ({"user": 1, "items": [1], "extra": 1}, 422, "unknown field 'extra'"),
    ({"items": [1]}, 422, "missing field 'user'"),
    ({"user": 1, "items": []}, 422, "items: List should have at least 1 item"),
    ({"user": 1, "items": list(range(51))}, 422, "items: 51 ids, over the limit of 50"),
    ({"user": 1.5, "items": [1]}, 422, "user: an id must be an integer or a string"),
    ({"user": True, "items": [1]}, 422, "user: an id must be an integer or a string"),
    ({"user": 1, "items": [1, None]}, 422, "items.1: an id must be an integer or a string"),
    ({"user": 1, "items": "1,2"}, 422, "items: Input should be a valid list"),
    ([1, 2], 422, "the body must be a JSON object"),
    ({"user": 999999, "items": [1]}, 422, "unknown user id '999999'"),
    ({"user": 1, "items": [1, 7000]}, 422, "unknown item id '7000'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_requests_get_one_clear_json_error(server, body, status, message):
    response = server.post("/predict", body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"]
    assert "Traceback" not in response.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b'{"user": 1,', JSON, 400, "the body is not valid JSON"),
        ('{"user": "\xff", "items": [1]}'.encode("latin-1"), JSON, 400, "not valid UTF-8"),
        (b'{"user": 1, "items": [1]}', {"content-type": "text/plain"}, 415, "Content-Type: application/json"),
        (b"[" + b"1," * 600_000 + b"1]", JSON, 413, "over the limit of 1,048,576 bytes"),
    ],
)
def test_malformed_bodies(server, content, headers, status, message):
    response = server.client.post("/predict", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    recommend = server.post("/recommend", {"user": 1, "top": 5000})
    assert recommend.status_code == 422 and "top: 5,000 is over the limit of 1,000" in recommend.json()["error"]
    assert server.client.get("/nowhere").json() == {"error": "Not Found"}


@pytest.mark.slow
def test_concurrent_requests_are_answered_as_alone(server):
    bodies = [{"user": user, "items": [user % 150, (user * 7) % 150, 101]} for user in range(48)]
    alone = [server.post("/predict", body).json() for body in bodies]
    with ThreadPoolExecutor(48) as pool:
        together = list(pool.map(lambda body: server.post("/predict", body), bodies))
    assert all(response.status_code == 200 for response in together)
    for single, response in zip(alone, together, strict=True):
        _same_ranking(response.json(), single)


class _SlowModel:
    """Stands in for ``dlrm_cli.api.Model``: records each batch and holds the first until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def predict_query(self, user, items):
        if user == "bad":
            from dlrm_cli.errors import DlrmUsageError

            raise DlrmUsageError("unknown user id 'bad'")
        return user

    def answer(self, queries):
        self.batches.append(list(queries))
        self.started.set()
        self.release.wait(30)
        return [_Ranking(query) for query in queries]


class _Ranking:
    def __init__(self, user) -> None:
        self.user = user

    def to_dict(self):
        return {"user": self.user}


def _submit(batcher, user: str):
    from dlrm_cli.serving.http import PredictRequest

    return asyncio.ensure_future(batcher.submit("predict", PredictRequest(user=user, items=[1]), 1))


async def _first_batch_held(state):
    """A started batcher over ``state``'s _SlowModel, scoring request "a" until the model is released."""
    from dlrm_cli.serving.http import Batcher

    batcher = Batcher(state)
    batcher.start()
    first = _submit(batcher, "a")
    await asyncio.get_running_loop().run_in_executor(None, state.model.started.wait, 30)
    return batcher, first


def test_the_batcher_scores_what_queued_meanwhile_in_one_pass():
    from dlrm_cli.config import ServeSettings
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.serving.http import ServiceState

    state = ServiceState(ServeSettings(store=Path("unused"), max_pairs=4, max_wait=0.0))
    model = state.model = _SlowModel()

    async def scenario():
        batcher, first = await _first_batch_held(state)
        rest = [_submit(batcher, user) for user in ["b", "c", "bad", "d", "e"]]  # queued meanwhile
        await asyncio.sleep(0)  # each of them runs up to its wait for an answer: all are queued
        model.release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert model.batches == [["a"], ["b", "c", "d"], ["e"]]  # 4 pairs at most; the bad request fails alone
    assert [r if isinstance(r, Exception) else r["user"] for r in results][:3] == ["a", "b", "c"]
    assert isinstance(results[3], DlrmUsageError) and results[5] == {"user": "e"}
    assert state.batches == 3 and state.batched_requests == 6


def test_stopping_the_batcher_finishes_the_batch_being_scored():
    from dlrm_cli.config import ServeSettings
    from dlrm_cli.serving.http import ServiceState

    state = ServiceState(ServeSettings(store=Path("unused")))
    model = state.model = _SlowModel()

    async def scenario():
        batcher, answer = await _first_batch_held(state)
        stopping = asyncio.ensure_future(batcher.stop())  # the queue is empty; one batch is being scored
        await asyncio.sleep(0.05)  # a stop that did not wait would have cancelled the batch by now
        assert not stopping.done()
        model.release.set()
        await stopping
        return await answer

    assert asyncio.run(scenario()) == {"user": "a"}


def _load(server: Server, stop: threading.Event, seen: list[str], failures: list[str]) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        user = 0
        while not stop.is_set():
            user = (user + 1) % 150
            response = client.post("/predict", json={"user": user, "items": [1, 2, 3]})
            if response.status_code != 200:
                failures.append(response.text)
            else:
                seen.append(response.json()["checkpoint"])


@pytest.mark.slow
def test_hot_reload_under_load_drops_no_request(trained_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(trained_store, store)
    server = Server(store, "--watch", "--watch-interval", "0.2").wait_ready()
    stop, seen, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_load, args=(server, stop, seen, failures)) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        server.wait_for(lambda: len(seen) > 20, "requests answered by the first model")
        assert Dlrm(store)("train", "--epochs", "1", "--name", "newer", "--seed", "1", *TINY).exit_code == 0
        server.wait_for(lambda: server.client.get("/model").json()["checkpoint"] == "newer", "the reload")
        answered = len(seen)
        server.wait_for(lambda: len(seen) > answered + 20, "requests answered by the new model")
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert failures == []
    assert seen[0] == "tiny" and seen[-1] == "newer"
    assert seen == sorted(seen, key=lambda name: name == "newer")  # one switch, never back
    assert server.client.get("/model").json()["reloads"] == 1
    assert server.stop() == 0


def _corrupt_copy(store: Path, source: str, name: str) -> None:
    """A checkpoint ``name`` whose meta.json is sound and newest, but whose weights fail their checksum."""
    from dlrm_cli.store.checkpoints import _meta_digest

    staging = store.parent / name
    shutil.copytree(store / source, staging)
    weights = staging / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
    meta = json.loads((staging / "meta.json").read_text())
    meta["created"] = "2999-01-01T00:00:00"
    meta["meta_sha256"] = _meta_digest(meta)
    (staging / "meta.json").write_text(json.dumps(meta))
    os.rename(staging, store / name)  # appears whole


@pytest.mark.slow
def test_a_checkpoint_that_fails_verification_is_refused_and_the_old_one_serves_on(trained_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(trained_store, store)
    server = Server(store, "--watch", "--watch-interval", "0.2").wait_ready()
    _corrupt_copy(store, "tiny", "zz-broken")
    assert Dlrm(store)("checkpoints", "--json").exit_code == 0
    refused = server.wait_for(lambda: server.client.get("/model").json()["refused"], "the refusal")
    assert refused[0]["checkpoint"] == "zz-broken" and "does not match its recorded checksum" in refused[0]["error"]
    response = server.post("/predict", {"user": 1, "items": [1]})
    assert response.status_code == 200 and response.json()["checkpoint"] == "tiny"
    assert server.stop() == 0
    assert any("not serving checkpoint zz-broken" in line for line in server.lines)


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight(trained_store):
    # tests/gated_serve.py is dlrm whose serve scores nothing until SIGTERM has come: every request is in flight.
    gated = [sys.executable, str(Path(__file__).parent / "gated_serve.py")]
    server = Server(trained_store, program=gated).wait_ready()
    count = 16
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(server.post, "/recommend", {"user": user, "top": 3}) for user in range(count)]
        requests = server.wait_for(
            lambda: (r := server.client.get("/model").json()["requests"])["received"] == count and r, "the requests"
        )
        assert requests["answered"] == 0  # all 16 in flight
        server.process.send_signal(signal.SIGTERM)
        responses = [future.result() for future in futures]
    assert [response.status_code for response in responses] == [200] * count
    assert server.stop() == 0
    assert f"Stopped after answering {count} requests" in "".join(server.lines)


def test_serve_refuses_an_empty_store_and_a_port_in_use(trained_store, tmp_path):
    import socket

    empty = subprocess.run(
        [*DLRM, "serve", "--port", "0", "--store", str(tmp_path / "none")], capture_output=True, text=True, timeout=300
    )
    assert empty.returncode == 2, empty.stderr  # nothing to serve: a usage error, as an unknown name is
    assert empty.stderr.strip().startswith("Error: no checkpoints in") and len(empty.stderr.splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [*DLRM, "serve", "--port", str(port), "--store", str(trained_store)]
        busy = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert busy.returncode == 2
    assert busy.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
