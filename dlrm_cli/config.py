"""Settings as dataclasses with visible defaults. Both are saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TableConfig:
    """One embedding table: the sparse feature it serves and how many rows it has."""

    feature: str
    num_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DLRM from its weights.

    The bottom MLP maps ``num_dense`` features to ``embedding_dim``; the top MLP ends in one logit that
    is squashed into ``[rating_min, rating_max]``.
    """

    num_dense: int
    tables: tuple[TableConfig, ...]
    embedding_dim: int = 128
    bottom_mlp: tuple[int, ...] = (512, 256, 128)
    top_mlp: tuple[int, ...] = (512, 256)
    rating_min: float = 0.0
    rating_max: float = 5.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_dense < 0:
            raise ValueError(f"num_dense must be >= 0, got {self.num_dense}")
        if not self.tables:
            raise ValueError("a DLRM needs at least one sparse feature")
        for table in self.tables:
            if table.num_embeddings < 1:
                raise ValueError(f"table {table.feature!r} needs at least one row, got {table.num_embeddings}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"the bottom MLP must end at embedding_dim={self.embedding_dim}, got {list(self.bottom_mlp)}"
            )
        if any(size < 1 for size in (*self.bottom_mlp, *self.top_mlp)):
            raise ValueError(f"MLP sizes must be >= 1, got {list(self.bottom_mlp)} and {list(self.top_mlp)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.rating_min < self.rating_max:
            raise ValueError(f"rating_min must be below rating_max, got {self.rating_min} and {self.rating_max}")

    @property
    def feature_names(self) -> list[str]:
        return [table.feature for table in self.tables]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        raw["tables"] = tuple(TableConfig(**table) for table in raw["tables"])
        raw["bottom_mlp"] = tuple(raw["bottom_mlp"])
        raw["top_mlp"] = tuple(raw["top_mlp"])
        return cls(**raw)


@dataclass
class TrainConfig:
    """How a model is trained. Defaults follow the seed script: Adam with a StepLR schedule."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    lr_step: int = 5
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    embedding_dim: int = 128
    embeddings: str = "fused"
    sparse_optimizer: str = "adagrad"
    sparse_lr: float = 0.2
    embedding_l2: float = 1e-3
    threads: int | None = None
    patience: int | None = None
    dropout: float = 0.0
    bottom_mlp: tuple[int, ...] = (512, 256)
    top_mlp: tuple[int, ...] = (512, 256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
