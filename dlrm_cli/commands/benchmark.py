"""``dlrm benchmark``: measure training, inference and MLP speed on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from dlrm_cli.options import JsonOption

EXAMPLE = "Example: dlrm benchmark --rows 100000 --json"


def benchmark_command(
    rows: Annotated[int, typer.Option(min=1, help="Rows in the user and item tables (catalogue size).")] = 100_000,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 256,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats per figure; the median is reported.")] = 5,
    seconds: Annotated[float, typer.Option(min=0.0, help="Minimum seconds per repeat.")] = 1.0,
    eval_ratings: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="Ratings scored for evaluate throughput.")
    ] = 1_000_000,
    paths: Annotated[str, typer.Option(help="Training paths to measure: fused,plain_ebc,reference.")] = (
        "fused,plain_ebc,reference"
    ),
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: one per core).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Measure training samples/s (dlrm fused, plain EBC, hand-written reference), inference latency,
    evaluate throughput and MLP GFLOP/s against a large matmul, in one process."""
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.parsing import parse_id_list

    chosen = tuple(parse_id_list(paths, "--paths"))
    known = ("fused", "plain_ebc", "reference")
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise DlrmUsageError(f"--paths takes {', '.join(known)}; got {unknown[0]!r}")

    import torch
    from rich.table import Table

    from dlrm_cli import ui
    from dlrm_cli.benchmark import BenchmarkSettings, run_benchmark

    if threads:
        torch.set_num_threads(threads)
    settings = BenchmarkSettings(
        rows=rows,
        batch_size=batch_size,
        repeats=repeats,
        min_seconds=seconds,
        eval_ratings=eval_ratings,
        paths=chosen,
    )
    console = ui.err()
    with console.status("Benchmarking…") as status:
        try:
            report = run_benchmark(settings, progress=lambda text: status.update(f"Benchmarking: {text}"))
        except ValueError as error:  # sizes this machine cannot hold
            raise DlrmUsageError(str(error)) from None
    if json_output:
        ui.print_json(report)
        return
    out = ui.out()
    s = report["settings"]
    table = Table(
        title=f"Training, batch {s['batch_size']}, {s['rows']:,}-row user and item tables, {s['threads']} threads"
    )
    table.add_column("path")
    table.add_column("samples/s", justify="right")
    table.add_column("fused is", justify="right")
    fused = report["train"].get("fused", {}).get("train_samples_per_s")
    for path, figures in report["train"].items():
        rate = figures["train_samples_per_s"]
        ratio = f"{fused / rate:.1f}x" if fused and path != "fused" else ""
        table.add_row(path, f"{rate:,.0f}", ratio)
    out.print(table)
    latency = Table(title="Inference (eager model, torch.inference_mode)")
    for column in ("batch", "p50 ms", "p99 ms", "ratings/s at p50"):
        latency.add_column(column, justify="right")
    for batch, figures in report["latency"].items():
        latency.add_row(
            batch,
            f"{figures['p50_ms']:.2f}",
            f"{figures['p99_ms']:.2f}",
            f"{int(batch) / figures['p50_ms'] * 1e3:,.0f}",
        )
    out.print(latency)
    e = report["evaluate"]
    out.print(f"Evaluate: {e['ratings']:,} ratings in {e['seconds']:.2f} s ({e['ratings_per_s']:,.0f} ratings/s)")
    m = report["mlp"]
    out.print(
        f"MLP work at batch {m['mlp_batch']:,}: {m['mlp_gflops']:.1f} GFLOP/s = "
        f"{100 * m['mlp_fraction_of_matmul']:.0f}% of a 2048x2048 matmul ({m['matmul_gflops']:.1f} GFLOP/s)"
    )
