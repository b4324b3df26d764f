"""``python tests/gated_serve.py ARGS...``: dlrm with ARGS, whose ``serve`` scores nothing until it has been told
to stop (tests/test_serve.py). The requests it has received by then are in flight when SIGTERM comes, by
construction rather than because scoring happened to be slower than the test's polling.
"""

import threading

import uvicorn

from dlrm_cli.cli.main import main
from dlrm_cli.serving import http

told_to_stop = threading.Event()
answer_batch = http._answer_batch
handle_exit = uvicorn.Server.handle_exit


def _answer_batch_once_told_to_stop(model, batch):
    told_to_stop.wait()
    return answer_batch(model, batch)


def _handle_exit_then_score(self, sig, frame):
    handle_exit(self, sig, frame)  # the server stops taking connections, and drains those it has
    told_to_stop.set()


http._answer_batch = _answer_batch_once_told_to_stop
uvicorn.Server.handle_exit = _handle_exit_then_score
main()
