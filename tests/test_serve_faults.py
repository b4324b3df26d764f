"""`dlrm serve` under faults: one client's bad request never fails another's, every model that `recommend` can
use is served, and each error has its documented JSON status.

``LiveServer`` runs the service in this process (uvicorn in a thread, on a real socket), so that a test can
hold a batch and read the service's state; tests/test_hostile.py uses it too."""

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
from typing import Any

import pytest
from conftest import Dlrm
from test_serve import _Ranking

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


class LiveServer:
    """The service over ``store`` on uvicorn, in a thread of this process."""

    def __init__(self, store: Path, checkpoint: str = "latest", **settings: Any) -> None:
        import uvicorn

        from dlrm_cli.config import ServeSettings
        from dlrm_cli.serving.http import ServiceState, create_app
        from dlrm_cli.serving.server import JsonHttpErrors, listen

        self.settings = ServeSettings(store=store, checkpoint=checkpoint, port=0, **settings)
        self.state = ServiceState(self.settings)
        listener = listen("127.0.0.1", 0)
        self.port = listener.getsockname()[1]
        app = create_app(self.settings, self.state)
        config = uvicorn.Config(app, http=JsonHttpErrors, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)

    def wait_for(self, condition, what: str, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := condition():
                return value
            assert self.thread.is_alive(), f"the server stopped while waiting for {what}"
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_ready(self) -> LiveServer:
        self.wait_for(lambda: self.state.model is not None or self.state.fatal, "the model")
        assert self.state.fatal is None, self.state.fatal
        return self

    def post(self, path: str, body: object) -> httpx.Response:
        return self.client.post(path, json=body)

    def send(self, path: str, content: bytes) -> httpx.Response:
        return self.client.post(path, content=content, headers={"content-type": "application/json"})

    def hold(self) -> Held:
        """Make the next batch wait for ``Held.release`` (from the model serving now on)."""
        held = Held(self.state.model)
        self.state.model = held
        return held

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)
        self.client.close()


class Held:
    """The served model, whose first batch waits, once it has started, until the test releases it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def answer(self, queries: list[Any]) -> list[Any]:
        self.entered.set()
        assert self.release.wait(120)
        return self.model.answer(queries)


@pytest.fixture(scope="module")
def live(trained_store: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("live") / "store"
    shutil.copytree(trained_store, store)
    server = LiveServer(store, "tiny").wait_ready()
    yield server
    server.stop()


# One client's bad request is its answer alone --------------------------------------------------------


def test_a_bad_request_among_good_ones_in_one_batch_fails_alone(live):
    good = [{"user": user, "items": [user % 150, 101, 7]} for user in range(12)]
    before = live.state.received
    held = live.hold()
    try:
        with ThreadPoolExecutor(len(good) + 2) as pool:
            first = pool.submit(live.post, "/predict", {"user": 3, "items": [1]})
            assert held.entered.wait(60)  # a batch is being scored: what comes now queues for the next one
            answers = [pool.submit(live.post, "/predict", body) for body in good]
            bad = pool.submit(live.post, "/predict", {"user": 5, "items": [1, 2**70]})

            def queued() -> bool:  # every request is behind the held batch, or the bad one was refused alone
                waiting = live.state.received - before
                return waiting == len(good) + 2 or (bad.done() and waiting == len(good) + 1)

            live.wait_for(queued, "the requests to queue")
            held.release.set()
            responses = [future.result() for future in [first, *answers]]
            refused = bad.result()
    finally:
        held.release.set()
        live.state.model = held.model
    assert [response.status_code for response in responses] == [200] * (len(good) + 1), [r.text for r in responses]
    for body, response in zip(good, responses[1:], strict=True):
        assert response.json()["user"] == str(body["user"]) and len(response.json()["items"]) == 3
    assert refused.status_code == 422 and refused.json() == {"error": "items.1: an integer id must fit in 64 bits"}


class _Fragile:
    """Stands in for ``dlrm_cli.api.Model``: user "huge" breaks the query (as an id past int64 once did),
    and a batch holding "poison" fails as a whole."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict_query(self, user, items):
        if user == "huge":
            raise OverflowError("Python int too large to convert to C long")
        return user

    def answer(self, queries):
        self.batches.append(list(queries))
        if "poison" in queries:
            raise RuntimeError("the batch failed")
        return [_Ranking(query) for query in queries]


def test_a_batch_that_fails_is_scored_again_request_by_request():
    from dlrm_cli.config import ServeSettings
    from dlrm_cli.serving.http import Batcher, PredictRequest, ServiceState

    state = ServiceState(ServeSettings(store=Path("unused"), max_wait=0.0))
    model = state.model = _Fragile()

    async def scenario():
        batcher = Batcher(state)
        requests = [PredictRequest(user=user, items=[1]) for user in ["a", "huge", "poison", "b"]]
        futures = [asyncio.ensure_future(batcher.submit("predict", request, 1)) for request in requests]
        batcher.start()  # after every request is queued: they make one batch
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return results

    a, huge, poison, b = asyncio.run(scenario())
    assert model.batches == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    assert (a, b) == ({"user": "a"}, {"user": "b"})
    assert isinstance(huge, OverflowError) and isinstance(poison, RuntimeError)
    assert state.batches == 1 and state.batched_requests == 4


# Each error its status -----------------------------------------------------------------------------------


def test_errors_met_while_answering_get_the_status_of_their_kind():
    from dlrm_cli.errors import CheckpointNotFound, CorruptCheckpoint, DataError, DlrmError, DlrmUsageError
    from dlrm_cli.serving.http import error_status

    assert error_status(DlrmUsageError("unknown user id '7'")) == 422
    assert error_status(DlrmError("nothing to recommend: user 7 rated every one of the 4 items")) == 409
    for unavailable in (CorruptCheckpoint("checkpoint x is corrupt"), DataError("ratings.dat: gone")):
        assert error_status(unavailable) == 503
    assert error_status(CheckpointNotFound("no checkpoint x")) == 503


class _Damaged:
    """The served model, as if a file it reads on first use turned out to be damaged."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def recommend_query(self, *args: Any) -> Any:
        from dlrm_cli.errors import CorruptCheckpoint

        raise CorruptCheckpoint("checkpoint tiny is corrupt: known.pt does not match its recorded checksum")


def test_a_checkpoint_that_cannot_answer_is_503_not_a_conflict(live):
    model = live.state.model
    live.state.model = _Damaged(model)
    try:
        response = live.post("/recommend", {"user": 1, "top": 3})
    finally:
        live.state.model = model
    assert response.status_code == 503, response.text
    assert response.json() == {"error": "checkpoint tiny is corrupt: known.pt does not match its recorded checksum"}
    assert live.post("/recommend", {"user": 1, "top": 3}).status_code == 200


def test_every_answer_is_counted_errors_included(live):
    before = (live.state.answered, live.state.errors)
    assert live.post("/predict", {"user": 1, "items": [1]}).status_code == 200
    assert live.post("/predict", {"user": 1}).status_code == 422
    assert live.send("/recommend", b"").status_code == 400
    assert live.client.get("/healthz").status_code == 200  # not a scoring request: not counted
    assert (live.state.answered, live.state.errors) == (before[0] + 3, before[1] + 2)
    counts = live.client.get("/model").json()["requests"]
    assert (counts["answered"], counts["errors"]) == (before[0] + 3, before[1] + 2)


def test_the_closing_line_counts_in_words_that_agree_with_the_number():
    from dlrm_cli.config import ServeSettings
    from dlrm_cli.serving.http import ServiceState
    from dlrm_cli.serving.server import closing_line

    state = ServiceState(ServeSettings(store=Path("unused")))
    state.answered, state.errors, state.batches = 1, 1, 0
    assert closing_line(state) == (
        "Stopped after answering 1 request to /predict and /recommend (1 of them with an error) in 0 batches"
    )
    state.answered, state.errors, state.batches = 2_000, 0, 1
    assert closing_line(state) == (
        "Stopped after answering 2,000 requests to /predict and /recommend (0 of them with an error) in 1 batch"
    )


def test_a_host_other_machines_can_reach_is_warned_about():
    from dlrm_cli.serving.server import exposure_warning

    for local in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(local) is None
    for exposed in ("0.0.0.0", "::", "192.168.1.20", "myhost.example"):
        warning = exposure_warning(exposed)
        assert warning is not None and warning.startswith(f"Warning: listening on {exposed}: anyone")
        assert "\n" not in warning


@pytest.mark.slow
def test_serve_on_every_interface_warns_and_counts_each_answer_when_it_stops(tmp_path):
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(tmp_path / "empty")}
    command = [sys.executable, "-m", "dlrm_cli", "serve", "--host", "0.0.0.0", "--port", "0", "--watch"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # up to the line that names the address
        lines.append(line)
        if found := re.search(r"http://0\.0\.0\.0:(\d+)", line):
            break
    assert found, "".join(lines)
    with httpx.Client(base_url=f"http://127.0.0.1:{found.group(1)}", timeout=60) as client:
        assert client.post("/predict", json={"user": 1, "items": [1]}).status_code == 503  # nothing to serve yet
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 0, rest
    warnings = [line for line in lines if line.startswith("Warning: ")]
    assert warnings == [lines[0]] and "anyone who can reach this machine" in warnings[0]
    assert rest.strip().splitlines()[-1] == (
        "Stopped after answering 1 request to /predict and /recommend (1 of them with an error) in 0 batches"
    )


# A model without a rating head is served --------------------------------------------------------------


def train_movielens(store: Path, folder: Path, name: str, objective: str) -> None:
    """A checkpoint of the small MovieLens set in ``folder`` (ratings 1 to 5, as real data has them)."""
    from fixtures import write_ml1m

    if not folder.exists():
        write_ml1m(folder)
    args = ["--data", f"movielens:{folder}", "--epochs", "1", "--embedding-dim", "8", "--objective", objective]
    result = Dlrm(store)("train", *args, "--name", name)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def ranking_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding ``rank``, a ranking-only checkpoint trained on ratings of 1 to 5."""
    folder = tmp_path_factory.mktemp("ranking")
    train_movielens(folder / "store", folder / "ml", "rank", "ranking")
    return folder / "store"


@pytest.mark.slow
def test_a_ranking_only_checkpoint_is_served_as_predict_and_recommend_answer_it(ranking_store):
    server = LiveServer(ranking_store, "rank").wait_ready()
    try:
        served = server.post("/predict", {"user": 12, "items": [1, 2, 3]})
        recommended = server.post("/recommend", {"user": 12, "top": 5})
    finally:
        server.stop()
    printed = json.loads(
        Dlrm(ranking_store)("predict", "--checkpoint", "rank", "--user", "12", "--items", "1,2,3", "--json").stdout
    )
    assert served.status_code == 200, served.text
    assert [e["item"] for e in served.json()["items"]] == [e["item"] for e in printed["items"]]
    for mine, theirs in zip(served.json()["items"], printed["items"], strict=True):
        assert "rating" not in mine and 0 <= mine["score"] <= 1
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert recommended.status_code == 200, recommended.text
    assert len(recommended.json()["items"]) == 5
