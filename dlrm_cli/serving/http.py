"""``dlrm serve``: a checkpoint behind an HTTP JSON API (FastAPI on uvicorn).

Requests are not scored one by one. Handlers queue them; one batcher task takes whatever is queued (up
to ``max_pairs`` user-item pairs) and answers the whole batch with one pass of the model in a worker
thread (``Model.answer``), so that concurrent clients share forward passes. While requests arrive together
(the last batch held more than one), a batch also waits up to ``max_wait`` seconds for more; a lone
client's request is scored at once. A batch takes the model it runs on when it starts: a hot reload
(``--watch``) swaps the model for later batches while the batches in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlrm_cli import __version__
from dlrm_cli.config import ServeSettings
from dlrm_cli.errors import DlrmError, DlrmUsageError

log = logging.getLogger("dlrm.serve")

Id = StrictInt | StrictStr


class PredictRequest(BaseModel):
    """``POST /predict``: rate ``items`` for ``user``, best first."""

    model_config = ConfigDict(extra="forbid")
    user: Id
    items: list[Id] = Field(min_length=1)


class RecommendRequest(BaseModel):
    """``POST /recommend``: the ``top`` items of the catalogue for ``user``."""

    model_config = ConfigDict(extra="forbid")
    user: Id
    top: StrictInt = Field(10, ge=1)
    exclude_seen: StrictBool = True


class RankedItemResponse(BaseModel):
    rank: int
    item: str
    title: str | None
    rating: float
    stars: str
    unseen_in_training: bool


class PredictResponse(BaseModel):
    """The items best first: the document ``dlrm predict --json`` prints."""

    checkpoint: str
    user: str
    recommended: str | None
    user_unseen_in_training: bool
    items: list[RankedItemResponse]


class RecommendResponse(PredictResponse):
    """The top items: the document ``dlrm recommend --json`` prints, less its timing."""

    scored: int
    exclude_seen: bool


@dataclass
class _Pending:
    kind: Literal["predict", "recommend"]
    request: Any
    future: asyncio.Future[Any]
    pairs: int


@dataclass
class ServiceState:
    """The model being served, and what happened to it: what /readyz and /model report."""

    settings: ServeSettings
    model: Any = None  # dlrm_cli.api.Model, once loaded
    identity: tuple[str, str] | None = None
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None
    load_error: str | None = None
    fatal: Exception | None = None  # the first load failed and nothing will retry it: the server stops
    reloads: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0  # requests queued for scoring
    batches: int = 0
    batched_requests: int = 0  # requests answered (or refused) by a batch


def checkpoint_identity(store: Path, ref: str) -> tuple[str, str]:
    """The checkpoint ``ref`` names now, and the checksum of its record: a new one means a new model."""
    from dlrm_cli.store.checkpoints import CheckpointStore

    checkpoints = CheckpointStore(store)
    name = checkpoints.resolve(ref)
    meta = json.loads((checkpoints.root / name / "meta.json").read_text())
    return name, str(meta.get("meta_sha256"))


def load_verified(store: Path, ref: str) -> Any:
    """Load the checkpoint (checksums verified on the way), read its training items, and check that it
    scores finite ratings inside its scale before it may serve."""
    import torch

    from dlrm_cli.api import load
    from dlrm_cli.scoring.metrics import score

    model = load(ref, store)
    catalog = model.loaded.catalog
    rows = torch.arange(min(len(catalog.users), len(catalog.items), 16))  # user i with item i
    ratings = score(model.loaded.model, catalog, rows, rows, model.loaded.device)
    low, high = catalog.rating_min, catalog.rating_max
    if not bool(torch.isfinite(ratings).all()) or bool(((ratings < low) | (ratings > high)).any()):
        raise DlrmError(f"checkpoint {model.name} scores ratings outside {low:g} to {high:g}; not serving it")
    if model.loaded.stages is None:  # a two-stage checkpoint keeps its users' known items itself
        _ = model.seen  # the training items recommend excludes, read now rather than by the first request
    return model


class Batcher:
    """Scores queued requests together: one forward pass per batch, in one worker thread."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="dlrm-score")
        self.task: asyncio.Task[None] | None = None
        self._carried: _Pending | None = None
        self._last_size = 0
        self._scoring = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Answer what is queued and what is being scored, then stop."""
        while not self.queue.empty() or self._carried is not None or self._scoring:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.worker.shutdown(wait=True)

    async def submit(self, kind: Literal["predict", "recommend"], request: Any, pairs: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Pending(kind, request, future, pairs))
        self.state.received += 1
        return await future

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._carried or await self.queue.get()
        self._carried = None
        batch, pairs = [first], first.pairs
        # Wait for company only while requests come together: a lone client's request goes at once.
        wait = self.state.settings.max_wait if self._last_size > 1 else 0.0
        deadline = loop.time() + wait
        while pairs < self.state.settings.max_pairs:
            try:
                pending = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if pairs + pending.pairs > self.state.settings.max_pairs:
                self._carried = pending  # the next batch starts with it
                break
            batch.append(pending)
            pairs += pending.pairs
        self._last_size = len(batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            model = self.state.model  # this batch finishes on this model, whatever a reload does meanwhile
            self._scoring = True
            try:
                results = await loop.run_in_executor(self.worker, _answer_batch, model, batch)
            except Exception as error:  # a failure of the batch as a whole: every request in it fails
                log.exception("scoring a batch failed")
                results = [error] * len(batch)
            finally:
                self._scoring = False
            self.state.batches += 1
            self.state.batched_requests += len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue  # the client went away
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)


def _answer_batch(model: Any, batch: list[_Pending]) -> list[Any]:
    """Check each request against ``model`` (a bad one fails alone), then score the good ones together."""
    queries: list[Any] = []
    results: list[Any] = []
    for pending in batch:
        request = pending.request
        try:
            if pending.kind == "predict":
                query = model.predict_query(request.user, request.items)
            else:
                query = model.recommend_query(request.user, request.top, request.exclude_seen)
        except DlrmError as error:
            results.append(error)
            continue
        results.append(len(queries))
        queries.append(query)
    rankings = model.answer(queries)
    answers: list[Any] = []
    for pending, result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            answers.append(result)
            continue
        ranking = rankings[result]
        if pending.kind == "predict":
            answers.append(ranking.to_dict())
        else:
            query = queries[result]
            answers.append(ranking.to_dict(scored=query.scored, exclude_seen=query.exclude_seen))
    return answers


class Watcher:
    """Looks at the store every ``interval`` seconds; a new checkpoint for the served reference is loaded
    and verified in a thread of its own, then swapped in. One that fails is logged, listed in /model and
    not tried again; the old model keeps serving."""

    def __init__(self, state: ServiceState, interval: float) -> None:
        self.state = state
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dlrm-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        settings = self.state.settings
        failed: set[tuple[str, str]] = set()
        while not self.stopped.wait(self.interval):
            try:
                identity = checkpoint_identity(settings.store, settings.checkpoint)
            except (DlrmError, OSError, ValueError):
                continue  # nothing (readable) to swap in yet; keep serving
            if identity == self.state.identity or identity in failed:
                continue
            try:
                model = load_verified(settings.store, identity[0])
            except (DlrmError, OSError, RuntimeError, ValueError) as error:
                failed.add(identity)
                message = " ".join(str(error).split())
                self.state.refused.append({"checkpoint": identity[0], "error": message, "at": time.time()})
                serving = self.state.model.name if self.state.model is not None else "nothing"
                log.error("not serving checkpoint %s: %s; still serving %s", identity[0], message, serving)
                continue
            self.state.model, self.state.identity = model, identity  # one assignment: atomic for requests
            self.state.reloads += 1
            gc.freeze()
            log.info("now serving checkpoint %s", model.name)


class DeclaredLengthLimit:
    """413 as a JSON error for a body whose declared Content-Length is over the limit (Starlette's own limit,
    which counts the bytes of every body as they arrive, answers this case in plain text)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if not declared.isdigit() or int(declared) > self.limit:
                response = _error(413, f"the request body is over the limit of {self.limit:,} bytes")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _validation_message(error: RequestValidationError, content_type: str) -> tuple[int, str]:
    """One line for the first problem of a request that did not validate, and its status."""
    errors = error.errors()
    # a misspelt field is both unknown and missing: name the one the client typed
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    kind = first.get("type", "")
    if kind == "json_invalid":
        return 400, "the body is not valid JSON"
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not location and kind in ("model_attributes_type", "dict_type"):
        if "json" not in content_type:
            return 415, "send the body as JSON, with Content-Type: application/json"
        return 422, "the body must be a JSON object"
    union = location and location[-1] in ("int", "str")  # which branch of ``int | str`` pydantic tried
    where = ".".join(location[:-1] if union else location)
    if kind == "extra_forbidden":
        return 422, f"unknown field {where!r}"
    if kind == "missing":
        return 422, f"missing field {where!r}"
    if union:
        return 422, f"{where}: an id must be an integer or a string"
    return 422, f"{where}: {first.get('msg', 'invalid value')}"


def create_app(
    settings: ServeSettings, state: ServiceState | None = None, on_fatal: Callable[[], None] | None = None
) -> Any:
    """The service over ``settings.checkpoint``; the model loads in the background once the app starts
    (``/readyz`` answers 503 until then). If that load fails and nothing watches the store for another,
    ``state.fatal`` holds the error and ``on_fatal`` is called (to stop the server)."""
    state = state or ServiceState(settings)
    batcher = Batcher(state)
    watcher = Watcher(state, settings.watch) if settings.watch else None
    load_first = _first_load(settings, state, watcher, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        batcher.start()
        loader = threading.Thread(target=load_first, name="dlrm-load", daemon=True)
        loader.start()
        yield
        await batcher.stop()
        if watcher is not None:
            watcher.stop()

    app = FastAPI(
        title="dlrm",
        version=__version__,
        max_body_size=settings.max_body,  # Starlette's limit: 413 past it, declared length or not
        summary="Predicted ratings and recommendations from a trained dlrm checkpoint",
        lifespan=lifespan,
    )
    app.state.dlrm = state
    _add_error_handlers(app, settings)
    _add_scoring_routes(app, settings, state, batcher)
    _add_status_routes(app, settings, state)
    return DeclaredLengthLimit(app, settings.max_body)  # outside FastAPI's own limit, which answers first


def _first_load(
    settings: ServeSettings, state: ServiceState, watcher: Watcher | None, on_fatal: Callable[[], None] | None
) -> Callable[[], None]:
    """What the loader thread runs when the app starts: load and verify the checkpoint, then start the watcher."""

    def load_first() -> None:
        try:
            identity = checkpoint_identity(settings.store, settings.checkpoint)
            state.model = load_verified(settings.store, identity[0])
            state.identity = identity
            # What is loaded now lives as long as the server: taken out of the garbage collector's sight, a
            # full collection no longer walks the ~400,000 objects of torch, TorchRec and pandas (190 ms
            # here, which every 100th request waited for).
            gc.freeze()
            state.ready_after = time.monotonic() - state.started
            log.info("ready: serving checkpoint %s, loaded in %.1f s", state.model.name, state.ready_after)
        except (DlrmError, OSError, RuntimeError, ValueError) as error:
            state.load_error = " ".join(str(error).split())
            if watcher is None:
                state.fatal = error
                if on_fatal is not None:
                    on_fatal()
                return
            log.error("cannot serve yet: %s; watching the store for a checkpoint", state.load_error)
        if watcher is not None:
            watcher.start()

    return load_first


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Every failure as ``{"error": "one line"}`` with its status."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(error, request.headers.get("content-type", ""))
        return _error(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for bytes that are not UTF-8
            message = "the body is not valid UTF-8 JSON"
        elif error.status_code == 413:
            message = f"the request body is over the limit of {settings.max_body:,} bytes"
        return _error(error.status_code, message)

    @app.exception_handler(DlrmError)
    async def refused(request: Request, error: DlrmError) -> JSONResponse:
        return _error(422 if isinstance(error, DlrmUsageError) else 409, str(error))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error answering %s", request.url.path)
        return _error(500, "internal error; the server log has the details")

    @app.exception_handler(_NotReady)
    async def not_ready(request: Request, error: _NotReady) -> JSONResponse:
        return _error(503, str(error))


def _serving(state: ServiceState) -> Any:
    """The model being served; 503 (``_NotReady``) while there is none."""
    if state.model is None:
        raise _NotReady(state.load_error or "the model is still loading")
    return state.model


def _add_scoring_routes(app: FastAPI, settings: ServeSettings, state: ServiceState, batcher: Batcher) -> None:
    """``POST /predict`` and ``/recommend``, queued for the batcher.

    The answers are built as plain JSON documents by the scoring thread and returned as they are; the
    response models document them in the OpenAPI schema without validating each one again."""

    @app.post("/predict", summary="Rate items for a user, best first", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> JSONResponse:
        _serving(state)
        if len(body.items) > settings.max_items:
            raise DlrmUsageError(f"items: {len(body.items):,} ids, over the limit of {settings.max_items:,}")
        return JSONResponse(await batcher.submit("predict", body, len(body.items)))

    @app.post("/recommend", summary="The top items of the catalogue for a user", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        model = _serving(state)
        if body.top > settings.max_top:
            raise DlrmUsageError(f"top: {body.top:,} is over the limit of {settings.max_top:,}")
        return JSONResponse(await batcher.submit("recommend", body, len(model.loaded.catalog.items)))


def _add_status_routes(app: FastAPI, settings: ServeSettings, state: ServiceState) -> None:
    """``GET /healthz``, ``/readyz`` and ``/model``."""

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and answering")
    async def readyz() -> JSONResponse:
        if state.model is None:
            return JSONResponse(
                {"ready": False, "error": state.load_error or "the model is still loading"}, status_code=503
            )
        return JSONResponse({"ready": True, "checkpoint": state.model.name, "ready_after_s": state.ready_after})

    @app.get("/model", summary="The checkpoint being served, and its metrics")
    async def model_info() -> dict[str, Any]:
        model = _serving(state)
        meta = model.meta
        return {
            "checkpoint": model.name,
            "reference": settings.checkpoint,
            "store": str(settings.store),
            "data": meta.get("run", {}).get("data"),
            "metrics": meta.get("metrics"),
            "epochs_done": meta.get("epochs_done"),
            "loaded_at": model.loaded_at,
            "reloads": state.reloads,
            "refused": state.refused,
            "requests": {
                "received": state.received,
                "answered": state.batched_requests,
                "batches": state.batches,
            },
            "limits": {"max_items": settings.max_items, "max_top": settings.max_top, "max_body": settings.max_body},
        }


class _NotReady(Exception):
    pass
