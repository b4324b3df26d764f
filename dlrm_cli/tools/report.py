"""The figures and tables behind ``dlrm report`` (matplotlib, headless)."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.runtime.files import temporary_beside
from dlrm_cli.runtime.progress import Progress, silent
from dlrm_cli.scoring.evaluation import TWO_STAGES, evaluation_of, rank_evaluation, score_ratings
from dlrm_cli.store.loading import open_model


def _runs(store: Path, refs: list[str], k: int, progress: Progress = silent) -> list[dict[str, Any]]:
    runs = []
    for ref in refs:
        progress(f"Loading checkpoint {ref}")
        loaded = open_model(store, ref)
        if "rating" not in loaded.model.config.heads:
            raise DlrmUsageError(
                f"checkpoint {loaded.checkpoint.name} has no rating head (--objective ranking), and report plots "
                "rating error; use dlrm evaluate --k 10 for its ranking figures"
            )
        test = score_ratings(
            loaded, "test", progress=_named(progress, loaded.checkpoint.name)
        )  # scored once: for the metrics table and for the histogram
        report = evaluation_of(loaded, test).to_dict()
        ranking = None
        if k:
            try:
                named = _named(progress, loaded.checkpoint.name)
                models = rank_evaluation(loaded, "test", (k,), baselines=False, progress=named).models
                ranking = models.get(TWO_STAGES, models.get("DLRM"))[f"@{k}"]  # type: ignore[index]
            except DlrmError:  # no test user with a relevant rating: nothing to rank
                ranking = None
        runs.append({"name": loaded.checkpoint.name, "meta": loaded.meta, "test": report, "ranking": ranking,
                     "k": k, "predicted": test.predicted, "actual": test.ratings.rating})  # fmt: skip
    return runs


def _named(progress: Progress, name: str) -> Progress:
    """``progress`` with each step's label naming the checkpoint, so that two runs' steps are two lines."""

    def report(label: str, done: int = 0, total: int = 0) -> None:
        progress(f"{name}: {label}", done, total)

    return report


def _figure(runs: list[dict[str, Any]]) -> plt.Figure:
    """Loss and validation curves of every run, one histogram per run of its own test ratings (actual and
    predicted), and the metrics table (beside the last histogram when there is room)."""
    rows = 2 + (len(runs) - 1) // 2 + (len(runs) % 2 == 0)
    heights = [1.0] * (rows - 1) + [1.0 if len(runs) % 2 else 0.2 + 0.05 * len(runs)]  # a table row of its own
    figure = plt.figure(figsize=(13, 4.5 * sum(heights)))
    grid = figure.add_gridspec(rows, 2, height_ratios=heights)
    loss, rmse = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    for run in runs:
        epochs = [h["epoch"] for h in run["meta"]["history"]]
        loss.plot(epochs, [h["train_loss"] for h in run["meta"]["history"]], marker="o", label=run["name"])
        rmse.plot(epochs, [h["val_rmse"] for h in run["meta"]["history"]], marker="o", label=run["name"])
    loss.set(title="Training loss (MSE)", xlabel="epoch", ylabel="MSE")
    rmse.set(title="Validation RMSE", xlabel="epoch", ylabel="RMSE")
    for axis in (loss, rmse):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    for index, run in enumerate(runs):
        _histogram(figure.add_subplot(grid[1 + index // 2, index % 2]), run)
    table = figure.add_subplot(grid[-1, 1] if len(runs) % 2 else grid[-1, :])
    table.axis("off")
    rows_shown = [_row(run) for run in runs]
    cells = table.table(cellText=[list(r.values()) for r in rows_shown], colLabels=list(rows_shown[0]), loc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.auto_set_column_width(list(range(len(rows_shown[0]))))
    cells.scale(1, 1.6)
    table.set_title("Final metrics (test split)")
    figure.tight_layout()
    return figure


def _histogram(axis: Any, run: dict[str, Any]) -> None:
    """One run's test ratings: the actual ones as grey bars, its predictions as an outline over them."""
    low, high = run["meta"]["model"]["rating_min"], run["meta"]["model"]["rating_max"]
    bins = torch.linspace(low, high, 41).tolist()
    actual = run["actual"].numpy()
    axis.hist(actual, bins=bins, alpha=0.4, color="grey", label=f"actual ({len(actual):,} ratings)")
    axis.hist(run["predicted"].numpy(), bins=bins, histtype="step", linewidth=1.5, label="predicted")
    axis.set(title=f"{run['name']}: test ratings, predicted and actual", xlabel="rating", ylabel="count")
    axis.legend()


def _row(run: dict[str, Any]) -> dict[str, str]:
    test, meta = run["test"], run["meta"]
    return {
        "run": run["name"],
        "data": meta["run"]["data"]["kind"],
        "epochs": str(len(meta["history"])),
        "best epoch": str(meta.get("best_epoch", "")),
        "val RMSE": f"{meta['metrics']['validation']['rmse']:.4f}",
        "test RMSE": f"{test['model']['rmse']:.4f}",
        "test MAE": f"{test['model']['mae']:.4f}",
        "mean baseline": f"{test['global_mean_baseline']['rmse']:.4f}",
        **(
            {
                f"NDCG@{run['k']}": f"{run['ranking']['ndcg']:.3f}",
                f"HitRate@{run['k']}": f"{run['ranking']['hit_rate']:.3f}",
            }
            if run["ranking"]
            else {}
        ),
    }


def build_report(store: Path, refs: list[str], output: Path, k: int = 10, progress: Progress = silent) -> list[str]:
    """Write the report for the named checkpoints (.html or .png, by ``output``'s suffix), with top-``k``
    ranking metrics (0: none); returns their names. ``progress`` hears each step."""
    runs = _runs(store, refs, k, progress)
    progress(f"Drawing {output.name}")
    figure = _figure(runs)
    tmp = temporary_beside(output)
    try:
        _write(runs, figure, tmp, output)
    except OSError as error:
        raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return [run["name"] for run in runs]


def _write(runs: list[dict[str, Any]], figure: plt.Figure, tmp: Path, output: Path) -> None:
    if output.suffix.lower() == ".png":
        figure.savefig(tmp, dpi=110)
    else:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        tmp.write_text(_html(runs, base64.b64encode(buffer.getvalue()).decode()))
    os.replace(tmp, output)


def _html(runs: list[dict[str, Any]], png: str) -> str:
    rows = [_row(run) for run in runs]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    names = ", ".join(html.escape(run["name"]) for run in runs)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dlrm report: {names}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>dlrm report: {names}</h1>
<table><tr>{head}</tr>{body}</table>
<p><img alt="training curves and prediction histogram" src="data:image/png;base64,{png}"></p>
</body></html>
"""
