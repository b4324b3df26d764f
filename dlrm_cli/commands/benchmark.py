"""``dlrm benchmark``: measure training, inference and MLP speed on this machine."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dlrm_cli.options import JsonOption, ThreadsOption

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
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Measure training samples/s (dlrm fused, plain EBC, hand-written reference), inference latency,
    evaluate throughput and MLP GFLOP/s against a large matmul, in one process."""
    from dlrm_cli.parsing import parse_id_list

    chosen = tuple(parse_id_list(paths, "--paths"))

    from dlrm_cli import ui
    from dlrm_cli.benchmark import BenchmarkSettings, run_benchmark

    settings = BenchmarkSettings(rows, batch_size, repeats, seconds, eval_ratings, paths=chosen, threads=threads)
    with ui.err().status("Benchmarking…") as status:
        report = run_benchmark(settings, progress=lambda text: status.update(f"Benchmarking: {text}"))
    if json_output:
        ui.print_json(report.to_dict())
    else:
        _show(report)


def _show(report: Any) -> None:
    from rich.table import Table

    from dlrm_cli import ui

    out, s = ui.out(), report.settings
    table = Table(
        title=f"Training, batch {s['batch_size']}, {s['rows']:,}-row user and item tables, {s['threads']} threads"
    )
    for column, justify in (("path", "left"), ("samples/s", "right"), ("fused is", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    fused = report.train.get("fused", {}).get("train_samples_per_s")
    for path, figures in report.train.items():
        rate = figures["train_samples_per_s"]
        table.add_row(path, f"{rate:,.0f}", f"{fused / rate:.1f}x" if fused and path != "fused" else "")
    out.print(table)
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
        f"{100 * m['mlp_fraction_of_matmul']:.0f}% of a 2048x2048 matmul ({m['matmul_gflops']:.1f} GFLOP/s)"
    )
