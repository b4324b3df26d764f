"""Progress on every long step (shown on a terminal, never beside --json), and small misleads: the report's
histograms and doctor's thread count."""

from __future__ import annotations

import json

import pytest
import torch

from dlrm_cli.runtime import progress as progress_rule


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr counts as a terminal (the test runner's never is)."""
    monkeypatch.setattr(progress_rule, "stderr_is_terminal", lambda: True)


class Heard:
    """A progress callback that keeps what it hears."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, label: str, done: int = 0, total: int = 0) -> None:
        self.calls.append((label, done, total))

    def counts(self, label: str) -> list[int]:
        return [done for heard, done, _ in self.calls if heard == label]

    def total(self, label: str) -> int:
        return next(total for heard, _, total in self.calls if heard == label)


def test_evaluate_shows_its_steps_on_a_terminal(trained, terminal):
    result = trained("evaluate", "--checkpoint", "tiny", "--k", "5")
    assert result.exit_code == 0, result.output
    for step in ("Loading checkpoint tiny", "Loading the synthetic data", "Scoring ratings", "Ranking users: DLRM"):
        assert step in result.stderr, result.stderr
    assert "global-mean baseline" in result.stdout and "Scoring" not in result.stdout


def test_no_progress_beside_json_or_off_a_terminal(trained, monkeypatch):
    monkeypatch.setattr(progress_rule, "stderr_is_terminal", lambda: True)
    result = trained("evaluate", "--checkpoint", "tiny", "--k", "5", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert json.loads(result.stdout)["ranking"]["ks"] == [5]
    monkeypatch.undo()  # the runner's stderr, which is not a terminal
    result = trained("evaluate", "--checkpoint", "tiny", "--k", "5")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "step"),
    [
        (("recommend", "--all-users", "--output", "{tmp}/recs.csv"), "Recommending: users"),
        (("export", "--format", "torchscript", "--output", "{tmp}/model.pt"), "Checking parity on"),
        (("export", "--quantize", "int8", "--output", "{tmp}/model.pt"), "float tables: scoring the test ratings"),
        (("report", "tiny", "--output", "{tmp}/report.html"), "tiny: Scoring ratings"),
    ],
)
def test_long_commands_show_progress_on_a_terminal(trained, terminal, tmp_path, args, step):
    result = trained(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.exit_code == 0, result.output
    assert step in result.stderr, result.stderr
    json_args = [*args, "--json"] if args[0] != "report" else None
    if json_args:  # the same command with --json: silent on stderr
        quiet = trained(*(arg.format(tmp=tmp_path) for arg in json_args), "--force")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == ""


def test_the_core_reports_counts_that_rise_to_the_total(trained_store, monkeypatch):
    from dlrm_cli.scoring import evaluation
    from dlrm_cli.store.loading import open_model

    monkeypatch.setattr(evaluation, "SCORED_PER_STEP", 100)
    heard = Heard()
    loaded = open_model(trained_store, "tiny", "cpu")
    report = evaluation.evaluate_checkpoint(loaded, "test", cutoffs=(5,), baselines=False, progress=heard)
    scored = heard.counts("Scoring ratings")
    assert scored[0] == 0 and scored[-1] == heard.total("Scoring ratings") == report.evaluation.count
    assert len(scored) > 3 and scored == sorted(scored)
    ranked = heard.counts("Ranking users: DLRM")
    assert ranked == sorted(ranked) and ranked[-1] == heard.total("Ranking users: DLRM") == report.ranking.users
    assert heard.calls[0] == ("Loading the synthetic data", 0, 0)  # a step of unknown length first


def test_the_report_labels_each_run_with_its_own_ratings():
    from matplotlib.patches import Rectangle

    from dlrm_cli.tools.report import _figure

    def run(name: str, actual: float, predicted: float, count: int) -> dict:
        meta = {
            "history": [{"epoch": 1, "train_loss": 1.0, "val_rmse": 1.0}],
            "model": {"rating_min": 1.0, "rating_max": 5.0},
            "run": {"data": {"kind": "csv"}},
            "best_epoch": 1,
            "metrics": {"validation": {"rmse": 1.0}},
        }
        test = {"model": {"rmse": 1.0, "mae": 1.0}, "global_mean_baseline": {"rmse": 1.0}}
        return {"name": name, "meta": meta, "test": test, "ranking": None, "k": 0,
                "actual": torch.full((count,), actual), "predicted": torch.full((count,), predicted)}  # fmt: skip

    figure = _figure([run("a", 1.0, 1.5, 30), run("b", 5.0, 4.5, 70)])
    charts = {axis.get_title().split(":")[0]: axis for axis in figure.axes if "test ratings" in axis.get_title()}
    assert set(charts) == {"a", "b"}
    for name, rating, count in (("a", 1.0, 30), ("b", 5.0, 70)):
        legend = [text.get_text() for text in charts[name].get_legend().get_texts()]
        assert legend == [f"actual ({count} ratings)", "predicted"]
        bars = [bar for bar in charts[name].patches if isinstance(bar, Rectangle) and bar.get_height() > 0]
        assert sum(bar.get_height() for bar in bars) == count  # its own ratings, all in one bar
        assert all(abs(bar.get_x() - rating) <= 0.1 + 1e-6 for bar in bars)


def test_doctor_says_one_thread_plainly(dlrm, monkeypatch):
    from dlrm_cli.tools import doctor

    monkeypatch.setattr(doctor, "available_cpus", lambda: 1)
    monkeypatch.setattr(doctor, "chosen_threads", lambda fixed: None)
    result = dlrm("doctor", "--json")
    threads = next(check for check in json.loads(result.stdout)["checks"] if check["name"] == "threads")
    assert threads["detail"].startswith("training picks 1 thread (1 of "), threads
    assert doctor.threads_detail(None, 4, 8).startswith("training picks 1 to 4 threads by measurement (4 of 8")


def test_a_step_that_comes_again_is_shown_again(terminal, capsys):
    from dlrm_cli.cli import tables

    with tables.progress() as progress:
        progress("step a")
        progress("step b")
        progress("step a")
    shown = capsys.readouterr().err
    assert "step a" in shown.rsplit("step b", 1)[1]  # the last frames show step a again
