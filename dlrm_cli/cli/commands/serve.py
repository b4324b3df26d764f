"""``dlrm serve``: answer predict and recommend requests over HTTP (the ``serve`` extra: FastAPI, uvicorn)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from dlrm_cli.cli import options as o
from dlrm_cli.config import DEFAULT_STORE, ServeSettings

SERVE = ServeSettings()

EXAMPLE = "Example: dlrm serve --checkpoint latest --watch   (then: curl localhost:8000/docs)"


def serve_command(
    checkpoint: o.CheckpointOption = "latest",
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network.")] = SERVE.host,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = SERVE.port,
    watch: Annotated[
        bool, typer.Option("--watch", help="Serve the newest checkpoint that --checkpoint names, swapped in live.")
    ] = False,
    watch_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between looks at the store.")
    ] = SERVE.watch_interval,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most user-item pairs scored in one forward pass (micro-batching).")
    ] = SERVE.max_pairs,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="Most milliseconds a request waits for others to share its batch.")
    ] = SERVE.max_wait * 1000,
    max_items: Annotated[int, typer.Option(min=1, help="Most items one /predict request may rate.")] = SERVE.max_items,
    max_top: Annotated[
        int, typer.Option(min=1, help="Largest top one /recommend request may ask for.")
    ] = SERVE.max_top,
    max_body: Annotated[int, typer.Option(min=1, help="Largest request body, in bytes.")] = SERVE.max_body,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads for scoring (default: OMP_NUM_THREADS, else the CPUs it may use)."),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request on stderr.")] = False,
    store: o.StoreOption = DEFAULT_STORE,
) -> None:
    """Serve a checkpoint over HTTP: POST /predict and /recommend, GET /healthz, /readyz, /model, /docs."""
    started = time.monotonic()
    from dlrm_cli.errors import DlrmError

    try:
        import uvicorn

        from dlrm_cli.serving.http import ServiceState, create_app
    except ImportError as error:
        raise DlrmError(
            f"dlrm serve needs the serve extra ({error.name} is missing): pip install 'dlrm-cli[serve]'"
        ) from None

    import logging
    import signal

    import torch

    from dlrm_cli import api  # noqa: F401  (torch and TorchRec load here, before the clock for readiness starts)
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.runtime.threads import available_cpus, chosen_threads

    torch.set_num_threads(chosen_threads(threads) or available_cpus())
    settings = ServeSettings(
        store=store,
        checkpoint=checkpoint,
        host=host,
        port=port,
        max_items=max_items,
        max_top=max_top,
        max_body=max_body,
        max_pairs=max_batch,
        max_wait=max_wait_ms / 1000,
        watch=watch_interval if watch else None,
        watch_interval=watch_interval,
    )
    if not watch:  # nothing to serve, and nothing will come: say so before listening
        from dlrm_cli.store.checkpoints import CheckpointStore

        CheckpointStore(store).resolve(checkpoint)
    try:  # bound here, so that a port in use is one line and not a server log
        listener = _listen(host, port)
    except OSError as error:
        raise DlrmUsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    imports = time.monotonic() - started
    state = ServiceState(settings)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, state, on_fatal=stop)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dlrm serve: %(message)s"))
    log = logging.getLogger("dlrm.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"Listening on http://{shown}:{bound} (API docs at /docs); loading checkpoint {checkpoint} "
        f"after {imports:.1f} s of imports",
        err=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    # uvicorn drains in-flight requests on SIGTERM or Ctrl-C, then raises the signal again for the handler
    # that was there before it: a quiet one, so that a drained shutdown ends here with exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: None)
    server.run(sockets=[listener])
    if state.fatal is not None:
        raise state.fatal
    typer.echo(f"Stopped after answering {state.batched_requests:,} requests in {state.batches:,} batches", err=True)


def _listen(host: str, port: int) -> Any:
    """A listening TCP socket. Its protocol is named (``IPPROTO_TCP``) so that asyncio sets TCP_NODELAY on
    the connections it accepts; without it, a kept-alive connection waits 40 ms for a delayed ACK."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    return listener
