from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlrm_cli.cli.main import app

# A small synthetic set and model: the suite must run in minutes on 2 CPU cores.
TINY = [
    *("--users", "200", "--items", "150", "--ratings", "6000"),
    *("--embedding-dim", "16", "--batch-size", "128", "--ensemble", "1"),
]


class Dlrm:
    """Runs ``dlrm`` in-process against one store, as a user would from the shell."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args], env={"DLRM_CHECKPOINT_DIR": str(self.store)})


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test parses into a cache of its own, never the user's ~/.cache/dlrm (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DLRM_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def dlrm(tmp_path: Path) -> Dlrm:
    """A CLI with an empty store of its own."""
    return Dlrm(tmp_path / "store")


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one tiny trained checkpoint named ``tiny``, shared by read-only tests."""
    store = tmp_path_factory.mktemp("trained") / "store"
    result = Dlrm(store)("train", "--epochs", "2", "--name", "tiny", *TINY)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture
def trained(trained_store: Path, tmp_path: Path) -> Dlrm:
    """A CLI over a private copy of the trained store, free to change it."""
    store = tmp_path / "store"
    shutil.copytree(trained_store, store)
    return Dlrm(store)


def tiny_request(store: Path, name: str | None = "core", **train: object):
    """A request for the TINY run through the core API, with ``train`` settings changed."""
    from dlrm_cli.config import RunConfig, SyntheticSpec, TrainConfig
    from dlrm_cli.training.request import TrainRequest

    settings = TrainConfig(embedding_dim=16, batch_size=128, **{"epochs": 2, **train})  # type: ignore[arg-type]
    data = SyntheticSpec(users=200, items=150, ratings=6000)
    return TrainRequest(RunConfig(settings, data), store=store, name=name)


def dead_pid() -> int:
    """A process id that no process has, now or later: one above the kernel's largest (``pid_max``). An
    ended child's id would do only until the system gave it to another process."""
    try:
        largest = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):  # not Linux
        largest = 4_194_304  # the largest pid_max Linux allows
    return largest + 1


def snapshot(store: Path) -> dict[str, bytes]:
    """Every file in the store with its bytes, to show that a failed command changed nothing."""
    if not store.exists():
        return {}
    return {str(path.relative_to(store)): path.read_bytes() for path in sorted(store.rglob("*")) if path.is_file()}


def assert_error(result, code: int, message: str, after_progress: bool = False) -> None:
    """One line on stderr, the documented exit code, and no traceback. ``after_progress``: a failure
    during training, where the run's progress lines precede the error line."""
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if after_progress:
        assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
