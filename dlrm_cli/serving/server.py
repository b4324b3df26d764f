"""``dlrm serve`` start to end: the socket bound before anything loads (a port in use is one line, not a
server log), the service of ``http`` on uvicorn, its log on stderr, and a drained shutdown on Ctrl-C or
SIGTERM. Importing this module imports uvicorn and FastAPI (the ``serve`` extra), not torch."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import socket
import time
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from dlrm_cli.config import ServeSettings
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.serving.http import ServiceState, create_app


def serve(
    settings: ServeSettings,
    started: float | None = None,
    say: Callable[[str], None] = print,
) -> ServiceState:
    """Serve ``settings.checkpoint`` until Ctrl-C or SIGTERM (requests in flight are answered first).
    ``say`` hears the lines for the user: where it listens (and how long the imports took since ``started``,
    a ``time.monotonic()``) and, once stopped, what it answered. Raises the load error if the checkpoint
    cannot be served and nothing watches the store for another."""
    started = time.monotonic() if started is None else started
    import torch

    from dlrm_cli import api  # noqa: F401  (torch and TorchRec load here, before the clock for readiness starts)
    from dlrm_cli.runtime.threads import available_cpus, chosen_threads

    torch.set_num_threads(chosen_threads(settings.threads) or available_cpus())
    if settings.watch is None:  # nothing to serve, and nothing will come: say so before listening
        from dlrm_cli.store.checkpoints import CheckpointStore

        CheckpointStore(settings.store).resolve(settings.checkpoint)
    try:  # bound here, so that a port in use is one line and not a server log
        listener = listen(settings.host, settings.port)
    except OSError as error:
        raise DlrmUsageError(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}") from None
    imports = time.monotonic() - started
    if warning := exposure_warning(settings.host):
        say(warning)
    state = ServiceState(settings)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, state, on_fatal=stop)
    _log_to_stderr()
    bound = listener.getsockname()[1]
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    say(
        f"Listening on http://{shown}:{bound} (API docs at /docs); loading checkpoint {settings.checkpoint} "
        f"after {imports:.1f} s of imports"
    )
    config = uvicorn.Config(
        app,
        http=JsonHttpErrors,
        log_level="warning",
        access_log=settings.access_log,
        lifespan="on",
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    # uvicorn drains in-flight requests on SIGTERM or Ctrl-C, then raises the signal again for the handler
    # that was there before it: a quiet one, so that a drained shutdown ends here with exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: None)
    server.run(sockets=[listener])
    if state.fatal is not None:
        raise state.fatal
    say(closing_line(state))
    return state


def closing_line(state: ServiceState) -> str:
    """What ``dlrm serve`` says once stopped: every answer to /predict and /recommend, errors included."""
    answered, batches = state.answered, state.batches
    return (
        f"Stopped after answering {answered:,} request{'' if answered == 1 else 's'} to /predict and /recommend "
        f"({state.errors:,} of them with an error) in {batches:,} batch{'' if batches == 1 else 'es'}"
    )


def exposure_warning(host: str) -> str | None:
    """One line for a host that other machines can reach (``0.0.0.0``, a public address or any name but
    ``localhost``): the server has no authentication and no TLS."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to any interface
    return (
        f"Warning: listening on {host}: anyone who can reach this machine on the network can query the model "
        "(no authentication, no TLS); put it behind a reverse proxy that provides both"
    )


_MALFORMED = json.dumps({"error": "the request is not valid HTTP"}).encode()


class JsonHttpErrors(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, answering a request it cannot parse (a malformed request line or header) with
    a JSON error like every other answer, where uvicorn's own is plain text."""

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(_MALFORMED)]
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", _MALFORMED]))
        self.transport.close()


def _log_to_stderr() -> None:
    """The service's own log (``dlrm.serve``: ready, reloads, refused checkpoints) on stderr, one prefix."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dlrm serve: %(message)s"))
    log = logging.getLogger("dlrm.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is named (``IPPROTO_TCP``) so that asyncio sets TCP_NODELAY on
    the connections it accepts; without it, a kept-alive connection waits 40 ms for a delayed ACK."""
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
