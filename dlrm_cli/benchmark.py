"""``dlrm benchmark``: training throughput of three paths, inference latency, evaluate throughput and MLP
efficiency, all measured in one process and one run (warm-up excluded, median of repeats).

The ``reference`` path is a DLRM of the same architecture written the way a hand-written script usually
is: one ``nn.EmbeddingBag`` per table, a ``Dataset`` returning one dict per sample, a ``DataLoader``
collating them, and Adam over every parameter. It exists here only to be measured against.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from dlrm_cli.config import SyntheticSpec, TrainConfig
from dlrm_cli.data.catalog import Dataset
from dlrm_cli.data.synthetic import generate
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.metrics import score
from dlrm_cli.model import RatingDLRM, to_rating
from dlrm_cli.optim import build_for_training
from dlrm_cli.training import model_config_for, train_step

PATHS = ("fused", "plain_ebc", "reference")


@dataclass(frozen=True)
class BenchmarkSettings:
    rows: int = 100_000
    batch_size: int = 256
    repeats: int = 5
    min_seconds: float = 1.0
    eval_ratings: int = 1_000_000
    latency_calls: int = 200
    mlp_batch: int = 2048
    paths: tuple[str, ...] = PATHS
    threads: int | None = None


@dataclass(frozen=True)
class BenchmarkReport:
    """Every figure of one benchmark run; ``to_dict()`` is ``dlrm benchmark --json``."""

    settings: dict[str, Any]
    train: dict[str, dict[str, float]]
    latency: dict[str, dict[str, float]]
    evaluate: dict[str, float]
    mlp: dict[str, float]
    ratios: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_rate(run: Callable[[], int], repeats: int, min_seconds: float) -> float:
    """Median over repeats of items per second; each repeat runs ``run`` until ``min_seconds`` pass."""
    run()  # warm-up: allocations, lazy initialisation, caches
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while True:
            done += run()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(done / elapsed)
    return statistics.median(rates)


# dlrm's own paths ----------------------------------------------------------------------------------


def _dlrm_train_rate(data: Dataset, embeddings: str, settings: BenchmarkSettings) -> float:
    torch.manual_seed(0)
    config = model_config_for(data, TrainConfig())
    model, optimizers = build_for_training(config, TrainConfig(embeddings=embeddings), torch.device("cpu"))
    train, catalog = data.train, data.catalog
    order = torch.randperm(len(train))
    position = [0]

    def step() -> int:
        start = position[0] % (len(train) - settings.batch_size)
        rows = order[start : start + settings.batch_size]
        position[0] += settings.batch_size
        dense, kjt = catalog.batch(train.user[rows], train.item[rows])
        train_step(model, optimizers, dense, kjt, train.rating[rows])
        return settings.batch_size

    return _median_rate(step, settings.repeats, settings.min_seconds)


# The hand-written reference ------------------------------------------------------------------------


class ReferenceDLRM(nn.Module):
    """The same architecture with one nn.EmbeddingBag per table and hand-rolled interactions."""

    def __init__(self, num_dense: int, table_rows: list[int], dim: int, bottom: tuple[int, ...], top: tuple[int, ...]):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for rows in table_rows)
        layers: list[nn.Module] = []
        width = num_dense
        for size in bottom:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.bottom = nn.Sequential(*layers)
        f = len(table_rows) + 1
        width = dim + f * (f - 1) // 2
        layers = []
        for size in top:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.top = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = [x] + [table(sparse[:, i : i + 1]) for i, table in enumerate(self.tables)]
        stacked = torch.stack(vectors, dim=1)
        products = torch.bmm(stacked, stacked.transpose(1, 2))
        i, j = torch.triu_indices(len(vectors), len(vectors), offset=1)
        z = torch.cat([x, products[:, i, j]], dim=1)
        return to_rating(self.top(z).squeeze(1), 0.0, 5.0)


class PerSampleRatings(TorchDataset):
    """One dict per rating, as a typical script's Dataset returns."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.train)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        train, catalog = self.data.train, self.data.catalog
        user, item = int(train.user[index]), int(train.item[index])
        return {
            "dense": torch.cat([catalog.users.dense[user], catalog.items.dense[item]]),
            "sparse": torch.tensor([user, item, int(catalog.items.sparse["category"][item, 0])]),
            "label": train.rating[index],
        }


def _reference_train_rate(data: Dataset, settings: BenchmarkSettings) -> float:
    torch.manual_seed(0)
    config = model_config_for(data, TrainConfig())
    model = ReferenceDLRM(
        config.num_dense,
        [t.num_embeddings for t in config.tables],
        config.embedding_dim,
        config.bottom_mlp,
        config.top_mlp,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PerSampleRatings(data), batch_size=settings.batch_size, shuffle=True, drop_last=True)
    batches: Iterator[dict[str, torch.Tensor]] = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = nn.functional.mse_loss(model(batch["dense"], batch["sparse"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return settings.batch_size

    return _median_rate(step, settings.repeats, settings.min_seconds)


# Inference -----------------------------------------------------------------------------------------


def _inference(data: Dataset, settings: BenchmarkSettings) -> tuple[dict[str, Any], dict[str, float]]:
    torch.manual_seed(0)
    model = RatingDLRM(model_config_for(data, TrainConfig())).eval()
    catalog, device = data.catalog, torch.device("cpu")
    users, items = len(catalog.users), len(catalog.items)
    generator = torch.Generator().manual_seed(0)
    latency: dict[str, dict[str, float]] = {}
    for batch in (1, 100, 10_000):
        calls = max(5, settings.latency_calls if batch < 10_000 else settings.latency_calls // 20)
        u = torch.randint(0, users, (batch,), generator=generator)
        i = torch.randint(0, items, (batch,), generator=generator)
        score(model, catalog, u, i, device)  # warm-up
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            score(model, catalog, u, i, device)
            times.append(time.perf_counter() - start)
        times.sort()
        latency[str(batch)] = {
            "p50_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)],
            "calls": calls,
        }
    n = settings.eval_ratings
    u = torch.randint(0, users, (n,), generator=generator)
    i = torch.randint(0, items, (n,), generator=generator)
    start = time.perf_counter()
    score(model, catalog, u, i, device)
    seconds = time.perf_counter() - start
    return latency, {"ratings": n, "seconds": seconds, "ratings_per_s": n / seconds}


# MLP efficiency ------------------------------------------------------------------------------------


def _mlp_efficiency(data: Dataset, settings: BenchmarkSettings) -> dict[str, float]:
    """Forward and backward of the bottom and top MLPs at a large batch, against a large matmul."""
    torch.manual_seed(0)
    model = RatingDLRM(model_config_for(data, TrainConfig()))
    bottom, top = model.dlrm.dense_arch, model.dlrm.over_arch
    bottom_layers, top_layers = model.dense_layers()
    flops_per_sample = 3 * sum(2 * m.in_features * m.out_features for m in (*bottom_layers, *top_layers))
    batch = settings.mlp_batch  # flops: forward, and twice that backward
    dense = torch.randn(batch, bottom_layers[0].in_features)
    over_in = torch.randn(batch, model.config.interaction_width)

    def mlp_step() -> int:
        out = bottom(dense).sum() + top(over_in).sum()
        out.backward()
        return batch

    mlp_rate = _median_rate(mlp_step, settings.repeats, settings.min_seconds) * flops_per_sample / 1e9
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)

    def matmul() -> int:
        torch.mm(a, b)
        return 1

    matmul_rate = _median_rate(matmul, settings.repeats, settings.min_seconds) * 2 * size**3 / 1e9
    return {
        "mlp_gflops": mlp_rate,
        "matmul_gflops": matmul_rate,
        "mlp_fraction_of_matmul": mlp_rate / matmul_rate,
        "mlp_batch": batch,
        "mlp_mflop_per_sample": flops_per_sample / 1e6,
    }


def run_benchmark(settings: BenchmarkSettings, progress: Callable[[str], None] = lambda _: None) -> BenchmarkReport:
    """Measure every figure in this process; ``progress`` hears what is being measured."""
    unknown = [path for path in settings.paths if path not in PATHS]
    if unknown:
        raise DlrmUsageError(f"--paths takes {', '.join(PATHS)}; got {unknown[0]!r}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        ratings = min(max(20_000, 40 * settings.batch_size), 2_000_000)
        spec = SyntheticSpec(users=settings.rows, items=settings.rows, ratings=ratings)
    except ValueError as error:  # sizes this machine cannot hold
        raise DlrmUsageError(str(error)) from None
    progress(f"data: synthetic, {settings.rows:,} users and {settings.rows:,} items")
    data = generate(spec)
    train: dict[str, dict[str, float]] = {}
    for path in settings.paths:
        progress(f"training throughput: {path}")
        if path == "reference":
            rate = _reference_train_rate(data, settings)
        else:
            rate = _dlrm_train_rate(data, "fused" if path == "fused" else "plain", settings)
        train[path] = {"train_samples_per_s": rate}
    progress("inference latency and evaluate throughput")
    latency, evaluate = _inference(data, settings)
    progress("MLP efficiency against a large matmul")
    mlp = _mlp_efficiency(data, settings)
    fused = train.get("fused", {}).get("train_samples_per_s")
    ratios = {
        f"fused_over_{path}": fused / train[path]["train_samples_per_s"] for path in train if path != "fused" and fused
    }
    ratios["mlp_over_matmul"] = mlp["mlp_fraction_of_matmul"]
    return BenchmarkReport(
        settings={
            "rows": settings.rows,
            "batch_size": settings.batch_size,
            "repeats": settings.repeats,
            "threads": torch.get_num_threads(),
            "tables": [{"feature": name, "rows": rows} for name, rows in data.catalog.sparse_features],
        },
        train=train,
        latency=latency,
        evaluate=evaluate,
        mlp=mlp,
        ratios=ratios,
    )
