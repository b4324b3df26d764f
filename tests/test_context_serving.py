"""Context columns outside the CLI's own commands: `dlrm serve`'s JSON `context` and the inputs of an exported
artifact, against the core's scores of the same pairs in the same context."""

from __future__ import annotations

import ast
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import Dlrm

USERS, ITEMS = [f"u{i}" for i in (3, 7, 11)], ["i1", "i2", "i5", "i8"]
CONTEXT = {"channel": "app", "hour": 20}


def write_context_csv(path: Path, rows: int = 2000) -> Path:
    """Ratings whose value moves with the channel and the hour they were given in."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, rows), rng.integers(0, 30, rows)
    channel = rng.choice(["web", "app", "tv"], rows, p=[0.5, 0.35, 0.15])
    hour = rng.integers(0, 24, rows)
    rating = 3 + 0.9 * (channel == "app") - 0.9 * (channel == "tv") + 0.06 * (hour - 12) + 0.4 * np.sin(users)
    rating = np.clip(np.round(rating + rng.normal(0, 0.3, rows)), 1, 5)
    lines = ["user,item,rating,channel,hour"]
    lines += [f"u{u},i{i},{r:.0f},{c},{h}" for u, i, r, c, h in zip(users, items, rating, channel, hour, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def context_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding ``ctx``: a small model with a categorical (channel) and a numeric (hour) context column."""
    folder = tmp_path_factory.mktemp("context")
    data = write_context_csv(folder / "ratings.csv")
    dlrm = Dlrm(folder / "store")
    args = ["--sparse-cols", "channel", "--dense-cols", "hour", "--epochs", "2", "--embedding-dim", "8"]
    result = dlrm("train", "--data", f"csv:{data}", *args, "--name", "ctx")
    assert result.exit_code == 0, result.output
    return folder / "store"


@pytest.fixture(scope="module")
def plain_store(context_store: Path) -> Path:
    """``plain`` beside ``ctx``: a model of the same ratings that reads no context columns."""
    data = context_store.parent / "ratings.csv"
    result = Dlrm(context_store.parent / "plain")("train", "--data", f"csv:{data}", "--epochs", "1", "--name", "plain")
    assert result.exit_code == 0, result.output
    return context_store.parent / "plain"


@pytest.fixture(scope="module")
def loaded(context_store: Path):
    from dlrm_cli.api import load

    return load("ctx", context_store).loaded


@pytest.fixture(scope="module")
def live(context_store: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("fastapi")
    from test_serve_faults import LiveServer

    store = tmp_path_factory.mktemp("live") / "store"
    shutil.copytree(context_store, store)
    server = LiveServer(store, "ctx").wait_ready()
    yield server
    server.stop()


def ratings_of(document: dict) -> dict[str, float]:
    return {entry["item"]: entry["rating"] for entry in document["items"]}


# dlrm serve ------------------------------------------------------------------------------------------------


def test_serve_scores_in_the_context_given_as_the_core_does(live, loaded):
    from dlrm_cli.scoring.recommending import rank_items, recommend

    for context in (CONTEXT, {"channel": "tv"}, {"hour": "7"}, None):
        body = {"user": "u3", "items": ITEMS, **({"context": context} if context is not None else {})}
        response = live.post("/predict", body)
        assert response.status_code == 200, response.text
        expected = rank_items(loaded, "u3", ITEMS, context)
        assert ratings_of(response.json()) == pytest.approx(ratings_of(expected.to_dict()), abs=1e-5)
        assert response.json()["context"] == expected.to_dict()["context"]
        assert response.json()["context_defaulted"] == expected.to_dict()["context_defaulted"]
    answered = live.post("/predict", {"user": "u3", "items": ITEMS, "context": CONTEXT}).json()
    assert answered["context"] == {"hour": 20.0, "channel": "app"} and answered["context_defaulted"] == []
    default = live.post("/predict", {"user": "u3", "items": ITEMS}).json()
    assert default["context_defaulted"] == ["hour", "channel"]
    assert ratings_of(answered) != pytest.approx(ratings_of(default), abs=1e-3)  # the context moves the ratings
    top = live.post("/recommend", {"user": "u7", "top": 5, "exclude_seen": False, "context": CONTEXT})
    assert top.status_code == 200, top.text
    expected = recommend(loaded, "u7", 5, exclude_seen=False, context=CONTEXT).to_dict()
    assert [entry["item"] for entry in top.json()["items"]] == [entry["item"] for entry in expected["items"]]
    assert ratings_of(top.json()) == pytest.approx(ratings_of(expected), abs=1e-5)
    assert top.json()["context"] == {"hour": 20.0, "channel": "app"}
    assert live.client.get("/model").json()["context"]["categorical"] == ["channel"]


def test_a_bad_context_is_a_422_while_good_requests_in_its_batch_are_answered(live, loaded):
    from dlrm_cli.scoring.recommending import rank_items

    good = [
        {"user": user, "items": ITEMS, "context": {"channel": channel}} for user in USERS for channel in ("app", "tv")
    ]
    queued_bad = {  # well-formed: refused by the model's context table, inside the batch
        "unknown column": ({"user": "u3", "items": ITEMS, "context": {"device": "phone"}}, "unknown context column"),
        "not a number": ({"user": "u3", "items": ITEMS, "context": {"hour": "late"}}, 'is numeric, got "late"'),
        "a list as text": ({"user": "u7", "top": 3, "context": {"channel": ["app"]}}, "takes a value as text"),
    }
    refused_bad = {  # refused before they join a batch
        "not an object": ({"user": "u3", "items": ITEMS, "context": ["app"]}, "context: must be an object"),
        "lone surrogate": (b'{"user": "u3", "items": ["i1"], "context": {"channel": "\\ud800"}}', "lone surrogate"),
    }

    def post(body: dict | bytes):
        if isinstance(body, bytes):  # text no JSON encoder would write
            return live.send("/predict", body)
        return live.post("/recommend" if "top" in body else "/predict", body)

    before = live.state.received
    held = live.hold()
    try:
        with ThreadPoolExecutor(len(good) + 8) as pool:
            first = pool.submit(live.post, "/predict", {"user": "u3", "items": ["i1"], "context": CONTEXT})
            assert held.entered.wait(60)  # a batch is being scored: what comes now queues for the next one
            answers = [pool.submit(live.post, "/predict", body) for body in good]
            bad = {name: pool.submit(post, body) for name, (body, _) in {**queued_bad, **refused_bad}.items()}
            waiting = 1 + len(good) + len(queued_bad)
            live.wait_for(lambda: live.state.received - before == waiting, "the requests to queue")
            held.release.set()
            responses = [future.result() for future in [first, *answers]]
            refused = {name: future.result() for name, future in bad.items()}
    finally:
        held.release.set()
        live.state.model = held.model
    assert [response.status_code for response in responses] == [200] * len(responses), [r.text for r in responses]
    for body, response in zip(good, responses[1:], strict=True):
        expected = rank_items(loaded, body["user"], ITEMS, body["context"])
        assert ratings_of(response.json()) == pytest.approx(ratings_of(expected.to_dict()), abs=1e-5)
    for name, (_, message) in {**queued_bad, **refused_bad}.items():
        assert refused[name].status_code == 422, (name, refused[name].text)
        error = refused[name].json()
        assert list(error) == ["error"] and "\n" not in error["error"] and message in error["error"], (name, error)


@pytest.mark.slow
def test_a_model_without_context_columns_refuses_a_context_and_exports_its_old_call(plain_store, tmp_path):
    pytest.importorskip("fastapi")
    import torch
    from test_serve_faults import LiveServer

    store = tmp_path / "store"
    shutil.copytree(plain_store, store)
    server = LiveServer(store, "plain").wait_ready()
    try:
        refused = server.post("/predict", {"user": "u3", "items": ITEMS, "context": {"channel": "app"}})
        answered = server.post("/predict", {"user": "u3", "items": ITEMS})
    finally:
        server.stop()
    assert refused.status_code == 422 and "has no context columns" in refused.json()["error"], refused.text
    assert answered.status_code == 200 and "context" not in answered.json()
    output = tmp_path / "model.pt"
    result = Dlrm(store)("export", "--checkpoint", "plain", "--format", "torchscript", "--output", output)
    assert result.exit_code == 0, result.output
    arguments = [argument.name for argument in torch.jit.load(str(output)).forward.schema.arguments]
    assert arguments == ["self", "users", "items"]
    assert "context" not in json.loads(Path(f"{output}.json").read_text())


# dlrm export -----------------------------------------------------------------------------------------------


def export(context_store: Path, output: Path, *args: str) -> dict:
    result = Dlrm(context_store)("export", "--checkpoint", "ctx", "--output", output, "--force", *args)
    assert result.exit_code == 0, result.output
    return json.loads(Path(f"{output}.json").read_text())


def artifact_ids(description: dict, kind: str, ids: list[str]):
    import torch

    return torch.tensor([description[kind]["vocabulary"].index(value) for value in ids])


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("pt2", marks=pytest.mark.slow)])
def test_the_exported_artifact_scores_in_the_context_given_and_defaults_without(context_store, loaded, tmp_path, fmt):
    import torch

    from dlrm_cli.scoring.recommending import rank_items

    output = tmp_path / f"model.{fmt}"
    description = export(context_store, output, "--format", fmt)
    context = description["context"]
    assert description["call"].startswith("model(users, items, context_dense, context_rows)")
    assert context["order"] == ["hour", "channel"] and context["numeric"]["columns"] == ["hour"]
    [channel] = context["categorical"]
    assert channel["column"] == "channel" and sorted(channel["vocabulary"]) == ["app", "tv", "web"]
    assert context["defaults"] == {name: value for name, value in loaded.catalog.context.defaults.items()}
    model = torch.jit.load(str(output)) if fmt == "torchscript" else torch.export.load(str(output)).module()
    users, items = artifact_ids(description, "users", ["u3"] * len(ITEMS)), artifact_ids(description, "items", ITEMS)
    n = len(ITEMS)
    for given in (CONTEXT, {"channel": "tv", "hour": 3.5}):
        dense = torch.full((n, 1), float(given["hour"]))
        rows = [torch.full((n, 1), channel["vocabulary"].index(given["channel"]) + 1)]
        ratings = model(users, items, dense, rows)[0]
        expected = ratings_of(rank_items(loaded, "u3", ITEMS, given).to_dict())
        assert ratings.tolist() == pytest.approx([expected[item] for item in ITEMS], abs=1e-5)
    if fmt == "torchscript":
        ratings = model(users, items)[0]  # no context given: every column at its default
    else:  # a pt2 artifact takes every input: NaN and the default rows stand for the defaults
        ratings = model(users, items, torch.full((n, 1), float("nan")), [torch.tensor([channel["default_rows"]] * n)])[
            0
        ]
    expected = ratings_of(rank_items(loaded, "u3", ITEMS, None).to_dict())
    assert ratings.tolist() == pytest.approx([expected[item] for item in ITEMS], abs=1e-5)
    assert ratings.tolist() != pytest.approx(model(users, items, dense, rows)[0].tolist(), abs=1e-3)


def test_a_features_artifact_describes_its_context_columns(context_store, tmp_path):
    description = export(context_store, tmp_path / "features.pt", "--format", "torchscript", "--inputs", "features")
    assert description["dense"]["features"][-1] == "context_hour"
    assert [feature["feature"] for feature in description["sparse"]][-1] == "channel"
    assert "standardised by the caller" in description["context"]["numeric"]["input"]
    assert description["context"]["categorical"][0]["vocabulary"] == ["app", "tv", "web"]


@pytest.mark.slow
def test_an_int8_artifact_takes_the_context_too(context_store, loaded, tmp_path):
    import torch

    from dlrm_cli.scoring.recommending import rank_items

    output = tmp_path / "q.pt"
    description = export(context_store, output, "--quantize", "int8")
    model = torch.jit.load(str(output))
    users, items = artifact_ids(description, "users", ["u3"] * len(ITEMS)), artifact_ids(description, "items", ITEMS)
    rows = [torch.full((len(ITEMS), 1), description["context"]["categorical"][0]["vocabulary"].index("app") + 1)]
    ratings = model(users, items, torch.full((len(ITEMS), 1), 20.0), rows)[0]
    expected = ratings_of(rank_items(loaded, "u3", ITEMS, CONTEXT).to_dict())
    assert ratings.tolist() == pytest.approx([expected[item] for item in ITEMS], abs=0.05)  # int8 tables


@pytest.mark.slow
def test_the_documented_loader_passes_a_context(context_store, loaded, tmp_path):
    from test_export import documented_loader, run_without_dlrm

    from dlrm_cli.scoring.recommending import rank_items

    output = tmp_path / "model.pt2"
    export(context_store, output)
    loader = documented_loader().split("\n\nmodel = ")[0]  # the class, used on this artifact
    script = f"{loader}\n\nprint(Ratings({str(output)!r}).predict('u3', {ITEMS!r}, {{'channel': 'tv'}}))\n"
    ratings, known = ast.literal_eval(run_without_dlrm(script, tmp_path))
    expected = ratings_of(rank_items(loaded, "u3", ITEMS, {"channel": "tv"}).to_dict())
    assert ratings == pytest.approx([expected[item] for item in ITEMS], abs=1e-4)  # the loader rounds to 4
    assert known == [True] * len(ITEMS)
