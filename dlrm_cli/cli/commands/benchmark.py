"""``dlrm benchmark``: measure training, inference and MLP speed on this machine."""

from __future__ import annotations

from typing import Annotated

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

    from dlrm_cli.cli import tables, ui
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
    with tables.progress(json_output) as progress:
        report = run_benchmark(settings, progress=lambda text: progress(f"Benchmarking: {text}"))
    if json_output:
        ui.print_json(report.to_dict())
    else:
        tables.show_benchmark(report)
