"""The README stays true: its table of `dlrm train` options shows the command's defaults, it stays a short
guide, and every command in its console blocks runs, top to bottom, in a fresh store (the slow test)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest
from typer.main import get_command

from dlrm_cli.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
BIN = Path(sys.executable).parent  # the virtual environment's bin: dlrm, python
MAX_LINES = 400
# What `make train` / `make test` already do in a fresh clone, shown for people installing by hand: not run here.
SET_UP = ("make ", "python3 -m venv", ".venv/bin/pip ", "pip ", "source ")
COMMAND_TIMEOUT = 900  # seconds; generous, for a machine whose cores are shared with other work
READY_TIMEOUT = 300


def _options_table() -> list[tuple[list[str], list[str], list[dict[str, str]]]]:
    """(options, defaults, presets) of each row of the `| option | default | meaning |` table, where both are
    listed. A default may name the presets that change it: `0.05 (*built-in*, *ranking* 0.1)` is 0.05, and 0.1
    for the built-in data and the ranking objective."""
    lines = README.read_text().splitlines()
    start = lines.index("| option | default | meaning |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        options_cell, defaults_cell = line.split("|")[1:3]
        options = re.findall(r"`(--[\w-]+)", options_cell)
        cells = [cell for cell in re.findall(r"(?:`[^`]*`|\([^)]*\)|[^,])+", defaults_cell) if cell.strip()]
        parsed = [re.fullmatch(r"\s*(.*?)\s*(?:\((.*)\))?\s*", cell).groups() for cell in cells]
        if parsed:
            rows.append(([*options], [value.strip(" `") for value, _ in parsed], [_presets(p) for _, p in parsed]))
    return rows


def _presets(text: str | None) -> dict[str, str]:
    """`*built-in*, *ranking* 0.1` -> {"built-in": "0.1", "ranking": "0.1"}."""
    presets, pending = {}, []
    for part in text.split(",") if text else []:
        name, value = re.fullmatch(r"\s*\*([\w-]+)\*\s*(.*?)\s*", part).groups()
        pending.append(name)
        if value:
            presets.update(dict.fromkeys(pending, value.strip("`")))
            pending = []
    return presets


def _same(shown: str, default: object) -> bool:
    if shown in ("on", "off"):
        return default is (shown == "on") or (shown == "off" and default is None)
    if isinstance(default, Enum):
        default = default.value
    try:
        return float(shown) == float(default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return shown == str(default)


def test_readme_train_option_defaults_are_the_commands():
    from dlrm_cli.config import OBJECTIVE_PRESETS, PRESETS

    params = {f"--{param.name.replace('_', '-')}": param.default for param in get_command(app).commands["train"].params}
    presets = {"built-in": PRESETS["synthetic"], "ranking": OBJECTIVE_PRESETS["ranking"]}
    rows = _options_table()
    assert len(rows) >= 9
    named = set()
    for options, defaults, changed in rows:
        assert len(options) == len(defaults), (options, defaults)
        for option, shown, by in zip(options, defaults, changed, strict=True):
            assert _same(shown, params[option]), (option, shown, params[option])
            for preset, value in by.items():
                key = option[2:].replace("-", "_")
                assert _same(value, presets[preset][key]), (option, preset, value, presets[preset][key])
                named.add((preset, key))
    every = {(preset, key) for preset, values in presets.items() for key in values if key != "objective"}
    assert every <= named, f"the table leaves out what a preset changes: {sorted(every - named)}"


def test_readme_is_a_short_guide():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    assert not re.findall(r"#\d+", text), "the README names issue numbers"
    assert not re.findall(r"dlrm \d+\.\d+", text), "the README tells version history (CHANGELOG.md does)"


# The README's console blocks, as steps to run.


@dataclass(frozen=True)
class Step:
    command: str  # as the README shows it, after `$ `
    script: tuple[str, str] | None = None  # (file name, text): the ```python block a `python NAME.py` runs


def _blocks(text: str) -> Iterator[tuple[str, list[str]]]:
    """(language, lines) of each fenced block, in order."""
    language, lines = None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and language is None:
            language, lines = fence.group(1), []
        elif fence:
            yield language, lines
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "a fenced block is never closed"


def _steps(text: str) -> list[Step]:
    """Every `$ ` command of the console blocks, in order (a line ending in a backslash goes on)."""
    steps, python = [], ""
    for language, lines in _blocks(text):
        if language == "python":
            python = textwrap.dedent("\n".join(lines)) + "\n"
            continue
        if language != "console":
            continue
        command = None
        for line in (line.strip() for line in lines):
            if command is not None:
                command += " " + line.rstrip("\\").strip()
            elif line.startswith("$ "):
                command = line[2:].rstrip("\\").strip()
            else:
                continue
            if not line.endswith("\\"):
                script = re.fullmatch(r"python (\w+\.py)", command)
                steps.append(Step(command, (script.group(1), python) if script else None))
                command = None
    return steps


def _created_and_used(steps: list[Step]) -> Iterator[tuple[str, set[str]]]:
    """Each checkpoint a command names with --checkpoint, with the names created (--name) before it."""
    created: set[str] = set()
    for step in steps:
        for used in re.findall(r"--checkpoint[ =]([\w.-]+)", step.command):
            yield used, set(created)
        created.update(re.findall(r"--name[ =]([\w.-]+)", step.command))


def test_readme_commands_use_only_checkpoints_created_before():
    steps = _steps(README.read_text())
    assert any(step.command.startswith("dlrm train") for step in steps)
    for used, created in _created_and_used(steps):
        assert used in created or used in ("latest", "best"), f"--checkpoint {used} before a command creates it"


def test_readme_python_commands_have_their_scripts():
    for step in _steps(README.read_text()):
        if step.script:
            assert step.script[1].strip(), f"`{step.command}` comes before any ```python block"


class Server:
    """A `dlrm serve` the README started, on a free port, until the next command that is not a curl."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        argv = shlex.split(command)
        if "--port" not in argv:
            argv += ["--port", "0"]
        self.log = cwd / "serve.log"
        self.process = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("w")
        )
        self.port = self._wait_until_ready()

    def _wait_until_ready(self) -> int:
        deadline = time.monotonic() + READY_TIMEOUT
        port = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"`{self.command}` exited: {self.log.read_text()}"
            if port is None:
                listening = re.search(r"Listening on http://127\.0\.0\.1:(\d+)", self.log.read_text())
                port = int(listening.group(1)) if listening else None
            if port is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                        if response.status == 200:
                            return port
                except OSError:  # refused, or 503 until the model is loaded
                    pass
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"`{self.command}` not ready after {READY_TIMEOUT} s: {self.log.read_text()}")

    def request(self, command: str, cwd: Path, env: dict[str, str]) -> str:
        """Runs one of the README's curl lines against this server (through urllib where curl is missing); a
        JSON document must come back."""
        command = re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{self.port}", command)
        if shutil.which("curl"):
            result = _shell(command, cwd, env)
            assert result.returncode == 0, (command, result.stdout)
            body = result.stdout
        else:
            body = _as_urllib(command)
        json.loads(body)
        return body

    def stop(self) -> str:
        """Ctrl-C, as a user stops it: it must exit 0. Returns what it printed."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"`{self.command}` did not stop on SIGINT: {self.log.read_text()}") from None
        assert code == 0, (self.command, code, self.log.read_text())
        return self.log.read_text()


def _as_urllib(command: str) -> str:
    """What `curl -s URL [-H 'K: V'] [-d BODY]` answers, asked with urllib (4xx answers too, as curl -s)."""
    words = shlex.split(command)[1:]
    url, headers, data = None, {}, None
    while words:
        word = words.pop(0)
        if word == "-H":
            key, value = words.pop(0).split(":", 1)
            headers[key.strip()] = value.strip()
        elif word in ("-d", "--data"):
            data = words.pop(0).encode()
        elif not word.startswith("-"):
            url = word if "://" in word else f"http://{word}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=COMMAND_TIMEOUT) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()


def _shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if command.startswith(".venv/bin/"):
        command = f"{BIN}/{command.removeprefix('.venv/bin/')}"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # in the order a terminal shows them
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def run_readme(workdir: Path, report=None) -> None:
    """Runs the README's commands in order in ``workdir``, a folder beside a ``shared`` that is the repository's
    ../shared, with a store and a parse cache of their own; ``report(step, output)`` sees each command's output."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DLRM_CHECKPOINT_DIR": str(workdir.parent / "store"),
        "DLRM_CACHE_DIR": str(workdir.parent / "cache"),
        "COLUMNS": os.environ.get("COLUMNS", "100"),
    }
    report = report or (lambda step, output: None)
    server: tuple[Step, Server] | None = None
    for step in _steps(README.read_text()):
        if step.command.startswith(SET_UP):
            continue
        if step.command.startswith("curl "):
            assert server is not None, f"`{step.command}` with no `dlrm serve` before it"
            report(step, server[1].request(step.command, workdir, env))
            continue
        if server is not None:
            report(server[0], server[1].stop())
            server = None
        if step.command.startswith("dlrm serve"):
            server = (step, Server(step.command, workdir, env))
            continue
        if step.script:
            (workdir / step.script[0]).write_text(step.script[1])
        result = _shell(step.command, workdir, env)
        report(step, result.stdout)
        assert result.returncode == 0, f"`{step.command}` exited {result.returncode}:\n{result.stdout}"
    if server is not None:
        report(server[0], server[1].stop())


@pytest.mark.slow
def test_readme_commands_run_top_to_bottom(tmp_path: Path):
    if "../shared/" in README.read_text() and not (SHARED / "data" / "ml-1m-subset").is_dir():
        pytest.skip("the README uses ../shared/data/ml-1m-subset, which is not beside this clone")
    (tmp_path / "shared").symlink_to(SHARED.resolve(), target_is_directory=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    run_readme(workdir)
