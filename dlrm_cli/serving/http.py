"""``dlrm serve``: a checkpoint behind an HTTP JSON API (FastAPI on uvicorn).

Requests are not scored one by one. Handlers queue them; one batcher task takes whatever is queued (up
to ``max_pairs`` user-item pairs) and answers the whole batch with one pass of the model in a worker
thread (``Model.answer``), so that concurrent clients share forward passes. While requests arrive together
(the last batch held more than one), a batch also waits up to ``max_wait`` seconds for more; a lone
client's request is scored at once. A batch takes the model it runs on when it starts: a hot reload
(``--watch``) swaps the model for later batches while the batches in flight finish on the old one.

One client's bad request is never another's failure: a request is checked whole before it joins a batch
(its ids too: an integer past 64 bits, text with a lone surrogate), each is turned into its query on its
own, and a batch that fails all the same is scored again request by request.
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
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlrm_cli import __version__
from dlrm_cli.config import ServeSettings
from dlrm_cli.errors import CheckpointNotFound, CorruptCheckpoint, DataError, DlrmError, DlrmUsageError

log = logging.getLogger("dlrm.serve")

SCORING = ("/predict", "/recommend")


def _id(value: object) -> int | str:
    """An id as a request may give it: an integer that fits in 64 bits, or text that can be answered back
    (no lone surrogate such as ``"\\ud800"``). Checked here, so that no request reaches a batch that it
    would fail."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("id_type", "an id must be an integer or a string")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise PydanticCustomError("id_range", "an integer id must fit in 64 bits")
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError(
                "id_text", "an id must be valid Unicode text (it holds a lone surrogate)"
            ) from None
    return value


Id = Annotated[int | str, PlainValidator(_id, json_schema_input_type=int | str)]


def _context(value: object) -> dict[str, Any] | None:
    """A request's ``context``: an object of column -> value, whose text can be answered back and whose
    numbers can be read as floats. Which columns the model has, and of what kind, its ``ContextTable.parse``
    checks against the model that scores the request."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PydanticCustomError("context_type", "must be an object of column: value")
    for name, given in value.items():
        for text in (name, given):
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise PydanticCustomError(
                        "context_text", "must be valid Unicode text (it holds a lone surrogate)"
                    ) from None
        if isinstance(given, int) and not isinstance(given, bool):
            try:
                float(given)
            except OverflowError:
                raise PydanticCustomError("context_range", f"column {name!r}: the number is too large") from None
    return value


Context = Annotated[
    dict[str, Any] | None, PlainValidator(_context, json_schema_input_type=dict[str, int | float | str] | None)
]


class PredictRequest(BaseModel):
    """``POST /predict``: rate ``items`` for ``user``, best first; ``context`` (a model with context columns):
    the moment the user asks in, each column not given at its default."""

    model_config = ConfigDict(extra="forbid")
    user: Id
    items: list[Id] = Field(min_length=1)
    context: Context = None


class RecommendRequest(BaseModel):
    """``POST /recommend``: the ``top`` items of the catalogue for ``user``."""

    model_config = ConfigDict(extra="forbid")
    user: Id
    top: StrictInt = Field(10, ge=1)
    exclude_seen: StrictBool = True
    explain: StrictBool = False  # each item's ``because``: the user's training items behind it
    context: Context = None  # as ``PredictRequest``'s


class BecauseResponse(BaseModel):
    """One of the user's training items behind a recommendation, and its weight."""

    item: str
    title: str | None = None
    weight: float


class RankedItemResponse(BaseModel):
    """An item: its predicted rating and stars, or for a model without a rating head (``--objective
    ranking``) its ``score``, the probability that the user picks it; a two-headed model's recommendations
    show both."""

    rank: int
    item: str
    title: str | None
    features: dict[str, float | str] | None = None  # the item's side values, where the data has them
    rating: float | None = None
    stars: str | None = None
    score: float | None = None
    unseen_in_training: bool
    because: list[BecauseResponse] | None = None  # with ``"explain": true``


class PredictResponse(BaseModel):
    """The items best first: the document ``dlrm predict --json`` prints."""

    checkpoint: str
    user: str
    recommended: str | None
    user_unseen_in_training: bool
    context: dict[str, float | str] | None = None  # a model with context columns: the values scored in
    context_defaulted: list[str] | None = None  # the columns of those that took their default
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
    answered: int = 0  # answers to /predict and /recommend, whatever their status
    errors: int = 0  # those of them with a 4xx or 5xx status


def checkpoint_identity(store: Path, ref: str) -> tuple[str, str]:
    """The checkpoint ``ref`` names now, and the checksum of its record: a new one means a new model."""
    from dlrm_cli.store.checkpoints import CheckpointStore

    checkpoints = CheckpointStore(store)
    name = checkpoints.resolve(ref)
    meta = json.loads((checkpoints.root / name / "meta.json").read_text())
    return name, str(meta.get("meta_sha256"))


def load_verified(store: Path, ref: str) -> Any:
    """Load the checkpoint (checksums verified on the way), read its training items, and check that it
    scores finite ratings inside its scale (a model without a rating head: probabilities, 0 to 1) before
    it may serve."""
    import torch

    from dlrm_cli.api import load
    from dlrm_cli.scoring.metrics import score

    model = load(ref, store)
    catalog = model.loaded.catalog
    rows = torch.arange(min(len(catalog.users), len(catalog.items), 16))  # user i with item i
    scores = score(model.loaded.model, catalog, rows, rows, model.loaded.device)  # what /predict answers
    if "rating" in model.loaded.model.config.heads:
        what, low, high = "ratings", catalog.rating_min, catalog.rating_max
    else:
        what, low, high = "probabilities", 0.0, 1.0
    if not bool(torch.isfinite(scores).all()) or bool(((scores < low) | (scores > high)).any()):
        raise DlrmError(f"checkpoint {model.name} scores {what} outside {low:g} to {high:g}; not serving it")
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
    """Check each request against ``model`` (a bad one fails alone), then score the good ones together.
    Should the batch fail all the same, each request is scored again alone: one request's failure is its
    own answer, never its neighbours'."""
    queries, places = _queries(model, batch)
    rankings = _rankings(model, queries)
    answers: list[Any] = []
    for pending, place in zip(batch, places, strict=True):
        if isinstance(place, BaseException):
            answers.append(place)
        elif isinstance(rankings[place], BaseException):
            answers.append(rankings[place])
        elif pending.kind == "predict":
            answers.append(rankings[place].to_dict())
        else:
            answers.append(_recommended(model, pending.request, queries[place], rankings[place]))
    return answers


def _recommended(model: Any, request: RecommendRequest, query: Any, ranking: Any) -> Any:
    """A recommendation's document (``explain``: with each item's reasons), or the error that refused it."""
    try:
        ranking = model.explain(ranking) if request.explain else ranking
    except Exception as error:  # this request's answer, whatever went wrong
        return error
    return ranking.to_dict(scored=query.scored, exclude_seen=query.exclude_seen)


def _queries(model: Any, batch: list[_Pending]) -> tuple[list[Any], list[Any]]:
    """Each request's query, and its place among them (or the error that refused it)."""
    queries: list[Any] = []
    places: list[Any] = []
    for pending in batch:
        request = pending.request
        try:
            # a request without a context leaves it out: each column at its default (none for a model without)
            given = {"context": request.context} if request.context is not None else {}
            if pending.kind == "predict":
                query = model.predict_query(request.user, request.items, **given)
            else:
                query = model.recommend_query(request.user, request.top, request.exclude_seen, **given)
        except Exception as error:  # this request's answer, whatever went wrong
            places.append(error)
            continue
        places.append(len(queries))
        queries.append(query)
    return queries, places


def _rankings(model: Any, queries: list[Any]) -> list[Any]:
    """The queries' rankings from one pass; if that pass fails, each query's ranking (or error) alone."""
    try:
        return list(model.answer(queries))
    except Exception as error:
        if len(queries) == 1:
            return [error]
        log.warning("a batch of %d requests failed (%s); scoring each alone", len(queries), _line(error))
    rankings: list[Any] = []
    for query in queries:
        try:
            rankings.extend(model.answer([query]))
        except Exception as error:
            rankings.append(error)
    return rankings


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


class AnswerCounter:
    """Counts the answers to /predict and /recommend as they go out, whatever their status: what /model
    and the closing line of ``dlrm serve`` report."""

    def __init__(self, app: Any, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in SCORING:
            return await self.app(scope, receive, send)

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.state.answered += 1
                self.state.errors += message["status"] >= 400
            await send(message)

        await self.app(scope, receive, counted)


def _line(error: BaseException | str) -> str:
    """A message on one line, as text that can be sent (a lone surrogate is escaped, not a failure)."""
    text = " ".join(str(error).split())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _line(message)}, status_code=status)


def error_status(error: DlrmError) -> int:
    """The HTTP status of an error met while answering: 422 for a request that names what the checkpoint
    does not know or asks what it cannot do; 503 when the checkpoint served cannot answer (a file of it is
    missing or damaged); 409 for another well-formed request that cannot be answered (nothing left to
    recommend)."""
    if isinstance(error, CheckpointNotFound | CorruptCheckpoint | DataError):
        return 503
    if isinstance(error, DlrmUsageError):
        return 422
    return 409


def _body_error(cause: BaseException | None) -> str:
    """What was wrong with a body that FastAPI could not parse (it says only "error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: it is nested too deeply"
    if isinstance(cause, ValueError):  # Python's limit on the digits of an integer
        return "the body is not valid JSON: it holds a number too long to read"
    return "the body is not valid JSON"


def _validation_message(error: RequestValidationError, content_type: str) -> tuple[int, str]:
    """One line for the first problem of a request that did not validate, and its status."""
    errors = error.errors()
    # a misspelt field is both unknown and missing: name the one the client typed
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    kind = first.get("type", "")
    if kind == "json_invalid":
        return 400, "the body is not valid JSON"
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(location)
    if not location:
        if kind == "string_unicode":  # a field's name that is not text
            return 422, "a field name must be valid Unicode text (one holds a lone surrogate)"
        if kind == "missing":
            return 400, "the body is empty: send a JSON object"
        if kind in ("model_attributes_type", "dict_type") and "json" not in content_type:
            return 415, "send the body as JSON, with Content-Type: application/json"
        if kind in ("model_attributes_type", "dict_type"):
            return 422, "the body must be a JSON object"
    if kind == "extra_forbidden":
        return 422, f"unknown field {where!r}"
    if kind == "missing":
        return 422, f"missing field {where!r}"
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
    # outside FastAPI's own limit, which answers first; outside both, the count of what was answered
    return AnswerCounter(DeclaredLengthLimit(app, settings.max_body), state)


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
        if message == "There was an error parsing the body":  # FastAPI's words for any body it cannot parse
            message = _body_error(error.__cause__)
        elif error.status_code == 413:
            message = f"the request body is over the limit of {settings.max_body:,} bytes"
        return _error(error.status_code, message)

    @app.exception_handler(DlrmError)
    async def refused(request: Request, error: DlrmError) -> JSONResponse:
        return _error(error_status(error), str(error))

    @app.exception_handler(MemoryError)
    async def out_of_memory(request: Request, error: MemoryError) -> JSONResponse:
        log.error("out of memory answering %s", request.url.path)
        return _error(503, "the server ran out of memory answering this request; try again with fewer items")

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.error("internal error answering %s", request.url.path, exc_info=error)
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
                "received": state.received,  # queued for scoring
                "answered": state.answered,  # answers to /predict and /recommend, errors included
                "errors": state.errors,
                "batches": state.batches,
            },
            "limits": {"max_items": settings.max_items, "max_top": settings.max_top, "max_body": settings.max_body},
            "context": _context_columns(model),
        }


def _context_columns(model: Any) -> dict[str, Any] | None:
    """The context columns a request may give, and each one's default (None: the model has none)."""
    table = model.loaded.catalog.context
    if table is None:
        return None
    return {"numeric": list(table.dense), "categorical": list(table.vocabularies), "defaults": dict(table.defaults)}


class _NotReady(Exception):
    pass
