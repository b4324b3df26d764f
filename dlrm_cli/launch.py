"""``dlrm train --nproc-per-node N``: start N training processes through torchrun and report once.

The workers read the effective options from a temporary TOML file (``--config``), so they train with
exactly the settings this process resolved. A worker that fails leaves its message in a folder; this
process shows the first one, naming the rank, instead of torchrun's multi-page report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from dlrm_cli.settings import to_toml

# Lines that torchrun itself prints; the workers' own output passes through untouched.
NOISE = ("*****", "Setting OMP_NUM_THREADS", "[rank", "WARNING:torch", "W1", "E1", "I1", "[W", "[E", "[I")


def launch(options: dict[str, Any], resume: str | None, command_line: dict[str, Any]) -> int:
    """Run torchrun and return the exit code the user should see."""
    nproc = int(options["nproc_per_node"])
    settings = {k: v for k, v in options.items() if k not in ("nproc_per_node", "store", "print_plan")}
    with tempfile.TemporaryDirectory(prefix="dlrm-launch-") as folder:
        config = Path(folder) / "train.toml"
        config.write_text(to_toml(settings))
        errors = Path(folder) / "errors"
        errors.mkdir()
        args = ["train", "--config", str(config), "--store", str(options["store"])]
        if options.get("print_plan"):
            args.append("--print-plan")
        if resume:
            args += ["--resume", resume]
            for key, value in command_line.items():
                if value is not None:
                    args += [f"--{key.replace('_', '-')}", str(value)]
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "DLRM_DIST_ERRORS": str(errors), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "dlrm_cli", *args,
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        relay = threading.Thread(target=_relay, args=(process.stderr,), daemon=True)
        relay.start()
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the workers got the signal too and are saving; wait for them
            code = process.wait()
        relay.join(timeout=5)
        reports = sorted(errors.iterdir())
        if code == 0:
            return 0
        if reports:
            exit_code, _, message = reports[0].read_text().partition("\t")
            sys.stderr.write(f"Error: {message}\n")
            return int(exit_code)
        sys.stderr.write(f"Error: a training process exited abnormally (torchrun exit code {code})\n")
        return 1


def _relay(stream: Any) -> None:
    """Copy the workers' stderr to ours, without torchrun's chatter, tracebacks or the workers' error lines
    (those are shown once, by ``launch``)."""
    in_traceback = False
    for line in stream:
        if line.startswith("Traceback") or "torch.distributed.elastic" in line or line.startswith("==="):
            in_traceback = True
        if in_traceback or line.startswith(("Error: ", *NOISE)) or not line.strip():
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
