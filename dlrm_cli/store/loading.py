"""Rebuild a model and its catalog from a checkpoint alone."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from dlrm_cli.config import ModelConfig
from dlrm_cli.data.catalog import Catalog
from dlrm_cli.errors import CorruptCheckpoint
from dlrm_cli.model.dlrm import RatingDLRM, build_model, pool_bags
from dlrm_cli.retrieval.features import PAIR_FEATURES, FeatureScale
from dlrm_cli.retrieval.generators import generator_from_state
from dlrm_cli.retrieval.history import History
from dlrm_cli.retrieval.two_stage import TwoStage
from dlrm_cli.store.checkpoints import Checkpoint, CheckpointStore
from dlrm_cli.store.known import Known, known_of


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    model: RatingDLRM
    catalog: Catalog
    device: torch.device
    stages: TwoStage | None = None  # a two-stage checkpoint's retrieval stage and ranker

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    @cached_property
    def known(self) -> Known:
        """The items each user rated in training and export's check pairs, read from the checkpoint on first use."""
        return known_of(self.checkpoint, len(self.catalog.users) + 1, len(self.catalog.items) + 1)


def load_model(checkpoint: Checkpoint, device: torch.device) -> LoadedModel:
    """The model in eval mode with its weights, and the catalog that turns ids into its inputs; the
    implicit-feedback bags come pooled, one row per entity (``pool_bags``)."""
    try:
        config = ModelConfig.from_dict(checkpoint.meta["model"])
        config.refuse_oversized(copies=2, hint="its meta.json cannot be what dlrm wrote here")
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptCheckpoint(f"checkpoint {checkpoint.name} is corrupt: bad model settings ({error})") from None
    state = checkpoint.tensors("model.pt")
    catalog_state = checkpoint.tensors("catalog.pt")
    model = build_model(config, device=device)
    try:
        model.load_state_dict(state)
        catalog = Catalog.from_state(catalog_state)
    except (KeyError, TypeError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise CorruptCheckpoint(f"checkpoint {checkpoint.name} is corrupt: {first}") from None
    stages = load_stages(checkpoint, catalog, device) if "stages" in checkpoint.meta else None
    model, catalog = pool_bags(model.eval(), catalog)
    return LoadedModel(checkpoint, model, catalog, device, stages)


def load_stages(checkpoint: Checkpoint, catalog: Catalog, device: torch.device) -> TwoStage:
    """A two-stage checkpoint's generator, known items and ranker (its bags pooled, as the main model's)."""
    record = checkpoint.meta["stages"]
    try:
        config = ModelConfig.from_dict(record["ranker"])
        config.refuse_oversized(copies=2, hint="its meta.json cannot be what dlrm wrote here")
        retrieval = checkpoint.tensors("retrieval.pt")
        ranker = build_model(config, device=device)
        ranker.load_state_dict(checkpoint.tensors("ranker.pt"))
        view = catalog if ranker_reads_context(config, catalog) else catalog.without_context()
        view = view if any(table.bag for table in config.tables) else view.without_bags()
        ranker, view = pool_bags(ranker.eval(), view)
        return TwoStage(
            generator=generator_from_state(retrieval["generator"]),
            history=History.from_state(retrieval["history"]),
            allowed=retrieval["allowed"],
            ranker=ranker,
            catalog=view,
            scale=FeatureScale(retrieval["scale"]["mean"], retrieval["scale"]["std"]),
            candidates=int(record["candidates"]),
            blend=float(record.get("blend", 0.0)),
            device=device,
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptCheckpoint(f"checkpoint {checkpoint.name} is corrupt: its ranking stage ({first})") from None


def ranker_reads_context(config: ModelConfig, catalog: Catalog) -> bool:
    """Whether a ranker of ``config`` reads ``catalog``'s context columns: it then has their numeric inputs
    beside the pair features and a table for each categorical one. A ranker trained before rankers read the
    context has neither, and keeps ordering without it."""
    context = catalog.context
    if context is None:
        return False
    numeric = config.num_dense == len(catalog.dense_names) + len(PAIR_FEATURES)
    return numeric and set(context.vocabularies) <= set(config.feature_names)


def open_model(store: Path | str, ref: str, device: str = "cpu") -> LoadedModel:
    """The checkpoint ``ref`` (a name, ``latest`` or ``best``) of the store at ``store``, ready to score on
    ``device`` (``auto``, ``cpu`` or ``cuda``): what evaluate, predict, recommend, export, report, serve
    and the Python API load. Scoring is what the process does from here, so glibc is asked to keep freed
    memory for reuse (``dlrm_cli.runtime.memory``; MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ opt out)."""
    from dlrm_cli.model.dlrm import resolve_device
    from dlrm_cli.runtime.memory import keep_freed_memory

    keep_freed_memory()
    return load_model(CheckpointStore(Path(store)).load(ref), resolve_device(device))
