"""``dlrm benchmark``: measure training, inference and MLP speed on this machine."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dlrm_cli.cli.options import JsonOption, ThreadsOption
from dlrm_cli.config import BenchmarkSettings

BENCH = BenchmarkSettings()

EXAMPLE = "Example: dlrm benchmark --rows 100000 --json"


def benchmark_command(
    rows: Annotated[int, typer.Option(min=1, help="Rows in the user and item tables (catalogue size).")] = BENCH.rows,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = BENCH.batch_size,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed repeats per figure; the median is reported.")
    ] = BENCH.repeats,
    seconds: Annotated[float, typer.Option(min=0.0, help="Minimum seconds per repeat.")] = BENCH.min_seconds,
    eval_ratings: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="Ratings scored for evaluate throughput.")
    ] = BENCH.eval_ratings,
    paths: Annotated[
        str,
        typer.Option(
            help="Training paths to measure: fused (dlrm's), plain_ebc (dlrm with TorchRec's plain tables), "
            "reference (a hand-written script with a per-sample DataLoader) and batched (that script with "
            "its batches cut from tensors)."
        ),
    ] = ",".join(BENCH.paths),
    model: Annotated[
        str,
        typer.Option(
            help="Models to train: default (the default model over --rows users and items), movielens (the "
            "default model, with its bags, on data of the MovieLens 1M subset's sizes) and seed (the seed "
            "example's: 1,000 users, 500 items, embeddings 64, MLPs 32-64 and 128-64)."
        ),
    ] = ",".join(BENCH.models),
    concurrent: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also train in this many processes at once, and in one alone, and report the total against "
            "the one alone (0 skips it).",
        ),
    ] = BENCH.concurrent,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Measure training samples/s (dlrm fused, plain EBC, two hand-written references) for the default and the
    seed example's model, several training processes at once against one alone, inference latency,
    evaluate throughput and MLP GFLOP/s against a large matmul."""
    from dlrm_cli.cli.parsing import parse_id_list

    chosen = tuple(parse_id_list(paths, "--paths"))
    models = tuple(parse_id_list(model, "--model"))

    from dlrm_cli.cli import ui
    from dlrm_cli.tools.benchmark import run_benchmark

    settings = BenchmarkSettings(
        rows=rows,
        batch_size=batch_size,
        repeats=repeats,
        min_seconds=seconds,
        eval_ratings=eval_ratings,
        paths=chosen,
        threads=threads,
        models=models,
        concurrent=concurrent,
    )
    with ui.err().status("Benchmarking…") as status:
        report = run_benchmark(settings, progress=lambda text: status.update(f"Benchmarking: {text}"))
    if json_output:
        ui.print_json(report.to_dict())
    else:
        _show(report)


def _show(report: Any) -> None:
    from rich.table import Table

    from dlrm_cli.cli import ui

    out, s = ui.out(), report.settings
    for model, rates in report.train.items():
        sizes = MODEL_SIZES.get(model, "")
        users = {
            "seed": "1,000 users and 500 items",
            "movielens": "3,000 users, 3,600 items, 487,650 ratings",
        }.get(model, f"{s['rows']:,}-row user and item tables")
        table = Table(title=f"Training, {model} model{sizes}, batch {s['batch_size']}, {users}")
        for column, justify in (("path", "left"), ("samples/s", "right"), ("fused is", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        fused = rates.get("fused", {}).get("train_samples_per_s")
        for path, figures in rates.items():
            rate = figures["train_samples_per_s"]
            table.add_row(path, f"{rate:,.0f}", f"{fused / rate:.1f}x" if fused and path != "fused" else "")
        out.print(table)
        if fused:
            ceiling = rates["fused"]["ceiling_samples_per_s"]
            out.print(
                f"  fused is {100 * fused / ceiling:.0f}% of this model's matmul-bound ceiling "
                f"({ceiling:,.0f} samples/s: its MLPs' work at the rate of a large matmul)"
            )
    c = report.concurrency
    if c:
        each = " + ".join(f"{rate:,.0f}" for rate in c["each_samples_per_s"])
        out.print(
            f"{c['processes']} training processes at once ({c['model']} model, fused): {each} = "
            f"{c['total_samples_per_s']:,.0f} samples/s, {c['total_over_solo']:.2f}x one alone "
            f"({c['solo_samples_per_s']:,.0f})"
        )
    latency = Table(title="Inference (eager model, torch.inference_mode)")
    for column in ("batch", "p50 ms", "p99 ms", "ratings/s at p50"):
        latency.add_column(column, justify="right")
    for batch, figures in report.latency.items():
        p50, p99 = figures["p50_ms"], figures["p99_ms"]
        latency.add_row(batch, f"{p50:.2f}", f"{p99:.2f}", f"{int(batch) / p50 * 1e3:,.0f}")
    out.print(latency)
    e, m = report.evaluate, report.mlp
    out.print(f"Evaluate: {e['ratings']:,} ratings in {e['seconds']:.2f} s ({e['ratings_per_s']:,.0f} ratings/s)")
    out.print(
        f"MLP work at batch {m['mlp_batch']:,}: {m['mlp_gflops']:.1f} GFLOP/s = "
        f"{100 * m['mlp_fraction_of_matmul']:.0f}% of a 2048x2048 matmul ({m['matmul_gflops']:.1f} GFLOP/s), "
        f"{s['threads']} threads"
    )


MODEL_SIZES = {
    "default": " (embeddings 32, MLPs 64 and 64-32, bags, biases)",
    "movielens": " (the default model with bags of ~160 ratings)",
    "seed": " (embeddings 64, MLPs 32-64, 128-64)",
}
