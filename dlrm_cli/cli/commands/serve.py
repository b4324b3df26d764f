"""``dlrm serve``: answer predict and recommend requests over HTTP (the ``serve`` extra: FastAPI, uvicorn)."""

from __future__ import annotations

import time
from typing import Annotated

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
    ] = SERVE.threads,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request on stderr.")] = SERVE.access_log,
    store: o.StoreOption = DEFAULT_STORE,
) -> None:
    """Serve a checkpoint over HTTP: POST /predict and /recommend, GET /healthz, /readyz, /model, /docs."""
    started = time.monotonic()
    from dlrm_cli.errors import DlrmError

    try:
        from dlrm_cli.serving.server import serve
    except ImportError as error:
        raise DlrmError(
            f"dlrm serve needs the serve extra ({error.name} is missing): pip install 'dlrm-cli[serve]'"
        ) from None

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
        threads=threads,
        access_log=access_log,
    )
    serve(settings, started, say=lambda line: typer.echo(line, err=True))
