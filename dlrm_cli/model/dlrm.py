"""The DLRM (arXiv 1906.00091) that predicts ratings, built from TorchRec's parts.

Legend: B batch size, F sparse features, D embedding dimension, Dn dense features.
Data flow: dense B x Dn -> bottom MLP -> B x D; sparse KJT -> EmbeddingBagCollection -> B x F x D;
pairwise dot products of the F + 1 vectors, concatenated with the dense embedding; top MLP -> one
logit per sample; ``rating_min + (rating_max - rating_min) * sigmoid(logit)``.
The loss lives outside the model (see ``dlrm_cli.training.run``) so that inference and export use it bare.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch, SparseArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig
from dlrm_cli.data.catalog import Bag, Catalog


def table_name(feature: str) -> str:
    return f"t_{feature}"


def to_rating(logits: torch.Tensor, rating_min: float, rating_span: float) -> torch.Tensor:
    """The rating scale's squash: ``rating_min + rating_span * sigmoid(logits)``. Every model that predicts
    ratings (the trained one, the serving copy, the benchmark's reference) ends here."""
    return rating_min + rating_span * torch.sigmoid(logits)


def embedding_configs(config: ModelConfig) -> list[EmbeddingBagConfig]:
    """One table per sparse feature, sum-pooled."""
    return [
        EmbeddingBagConfig(
            name=table_name(table.feature),
            embedding_dim=config.embedding_dim * config.ensemble,  # each member's columns side by side
            num_embeddings=table.num_embeddings,
            feature_names=[table.feature],
            pooling=PoolingType.SUM,
        )
        for table in config.tables
    ]


BIAS_COLUMNS = 4  # FBGEMM's kernels take rows of a multiple of 4 floats: a bias is the sum of a row's 4


def bias_configs(config: ModelConfig) -> list[EmbeddingBagConfig]:
    """One narrow table per id feature: each user's and each item's additive bias for each head, the sum of
    that head's ``BIAS_COLUMNS`` columns of its row."""
    return [
        EmbeddingBagConfig(
            name=bias_name(table.feature),
            embedding_dim=BIAS_COLUMNS * len(config.heads),
            num_embeddings=table.num_embeddings,
            feature_names=[table.feature],
            pooling=PoolingType.SUM,
        )
        for table in config.bias_tables
    ]


def bias_name(feature: str) -> str:
    return f"b_{feature}"


class Member(nn.Module):
    """One more model of an ensemble (``ModelConfig.ensemble``): its own bottom MLP, interactions and top MLP
    over its own columns of the pooled embeddings. The first model is ``DLRMArches``'s own arches."""

    def __init__(self, dense_arch: nn.Module, inter_arch: nn.Module, over_arch: nn.Module, dropout: float) -> None:
        super().__init__()
        self.dense_arch = dense_arch
        self.inter_arch = inter_arch
        self.over_arch = over_arch
        self.dropout = nn.Dropout(dropout)

    def forward(self, dense_features: torch.Tensor, embedded_sparse: torch.Tensor) -> torch.Tensor:
        interactions = self.inter_arch(dense_features=self.dense_arch(dense_features), sparse_features=embedded_sparse)
        return self.over_arch(self.dropout(interactions))


class DLRMArches(nn.Module):
    """TorchRec's four DLRM parts, under the names TorchRec's ``DLRM`` gives them (so a checkpoint's keys are
    ``dlrm.sparse_arch...``, ``dlrm.dense_arch...``), and the one computation from pooled embeddings to
    logits (``head_logits``) that the trained model, the scoring model and every serving artifact run.
    An ensemble's other models are ``members`` (none for one model, so its keys are as they always were).

    A serving artifact holds its own copy without ``sparse_arch`` (its tables are plain ``nn.EmbeddingBag``s).
    No ``forward``: TorchScript compiles only what an artifact calls (``head_logits``)."""

    def __init__(
        self,
        sparse_arch: SparseArch | None,
        dense_arch: nn.Module,
        inter_arch: nn.Module,
        over_arch: nn.Module,
        dropout: float,
        members: list[Member] | None = None,
    ) -> None:
        super().__init__()
        self.sparse_arch = sparse_arch
        self.dense_arch = dense_arch
        self.inter_arch = inter_arch
        self.over_arch = over_arch
        # Dropout on the interaction features, the top MLP's input; it has no weights, so it leaves the
        # state dict (and every checkpoint and export) unchanged.
        self.dropout = nn.Dropout(dropout)
        self.members = nn.ModuleList(members or [])

    @classmethod
    def build(cls, config: ModelConfig, embedding_bag_collection: nn.Module, device: torch.device | None) -> DLRMArches:
        """The arches of ``config``'s model, built in TorchRec's order (so a seed gives the same weights), then
        those of an ensemble's other models."""
        sparse_arch = SparseArch(embedding_bag_collection)
        features = len(sparse_arch.sparse_feature_names)
        arches = [cls._arches(config, features, device) for _ in range(config.ensemble)]
        members = [Member(*parts, config.dropout) for parts in arches[1:]]
        return cls(sparse_arch, *arches[0], config.dropout, members)

    @staticmethod
    def _arches(config: ModelConfig, features: int, device: torch.device | None) -> tuple[nn.Module, ...]:
        dense_arch = DenseArch(in_features=config.num_dense, layer_sizes=list(config.bottom_mlp), device=device)
        inter_arch = InteractionArch(num_sparse_features=features)
        over_arch = OverArch(
            in_features=config.interaction_width,
            layer_sizes=[*config.top_mlp, len(config.heads)],
            device=device,
        )
        return dense_arch, inter_arch, over_arch

    def head_logits(
        self, dense_features: torch.Tensor, embedded_sparse: torch.Tensor, biases: torch.Tensor | None
    ) -> torch.Tensor:
        """
        Args:
            dense_features: B x Dn.
            embedded_sparse: B x F x D, each feature's pooled embedding (B x F x KD for an ensemble of K).
            biases: B x I x H x ``BIAS_COLUMNS``, each of the I id features' bias row for each of the H heads
                (a head's bias is the sum of its columns), or None.

        Returns:
            B x H: each head's logit (an ensemble's: the mean of its models' logits).
        """
        if len(self.members) == 0:
            embedded_dense = self.dense_arch(dense_features)
            interactions = self.inter_arch(dense_features=embedded_dense, sparse_features=embedded_sparse)
            logits = self.over_arch(self.dropout(interactions))
            if biases is not None:
                logits = logits + biases.sum(dim=(1, 3))
            return logits
        return self.member_logits(dense_features, embedded_sparse, biases).mean(dim=2)

    def member_logits(
        self, dense_features: torch.Tensor, embedded_sparse: torch.Tensor, biases: torch.Tensor | None
    ) -> torch.Tensor:
        """B x H x K: each of an ensemble's K models' logits, each from its own columns of the embeddings."""
        width = embedded_sparse.shape[2] // (len(self.members) + 1)
        own = embedded_sparse.narrow(2, 0, width)
        interactions = self.inter_arch(dense_features=self.dense_arch(dense_features), sparse_features=own)
        logits = [self.over_arch(self.dropout(interactions))]
        for index, member in enumerate(self.members):
            logits.append(member(dense_features, embedded_sparse.narrow(2, (index + 1) * width, width)))
        stacked = torch.stack(logits, dim=2)
        if biases is not None:
            stacked = stacked + biases.sum(dim=(1, 3)).unsqueeze(2)
        return stacked


class RatingDLRM(nn.Module):
    """The DLRM with a rating head, a ranking head or both, and id biases.

    Example::

        config = ModelConfig(num_dense=2, tables=(TableConfig("user_id", 10),), embedding_dim=4,
                             bottom_mlp=(8, 4), top_mlp=(8,))
        model = RatingDLRM(config)
        kjt = KeyedJaggedTensor.from_lengths_sync(["user_id"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        model(torch.rand(2, 2), kjt)  # a tensor of size 2, each value in [0, 5]

    ``predict`` (and calling the model) gives the first head on its scale; ``logits`` every head's logit;
    ``ranking_scores`` what orders a user's items; ``training_outputs`` the logits and the pooled embeddings
    that training penalises. Every one of them runs ``DLRMArches.head_logits``, as the serving artifacts do.
    """

    def __init__(
        self,
        config: ModelConfig,
        embedding_bag_collection: nn.Module | None = None,
        device: torch.device | None = None,
        biases: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        if embedding_bag_collection is None:
            embedding_bag_collection = EmbeddingBagCollection(tables=embedding_configs(config), device=device)
        if biases is None and config.biases:
            biases = EmbeddingBagCollection(tables=bias_configs(config), device=device)
        # Each id's bias, added to the logit (a collection of narrow tables over the same KJT).
        self.biases = biases
        self.dlrm = DLRMArches.build(config, embedding_bag_collection, device)
        self.rating_min = config.rating_min
        self.rating_span = config.rating_max - config.rating_min
        # The implicit-feedback bags' positions among the features: their sums are divided by sqrt(n).
        self.bag_positions = [index for index, table in enumerate(config.tables) if table.bag]

    @property
    def uses_fused_kernels(self) -> bool:
        """True when the tables are FBGEMM's fused training tables (see ``dlrm_cli.model.optim``)."""
        return not isinstance(self.dlrm.sparse_arch.embedding_bag_collection, EmbeddingBagCollection)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``predict``: what calling the model gives, for scoring and for TorchRec's tracing."""
        return self.predict(dense_features, sparse_features)

    def predict(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense_features: B x Dn.
            sparse_features: a KJT with the F features of ``config.tables``, B samples each.

        Returns:
            a tensor of size B: the first head's output on its scale (the rating; for a ranking-only model, the
            probability of an interaction).
        """
        return self.squash(self.logits(dense_features, sparse_features)[:, 0], self.config.heads[0])

    def logits(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """B x H: every head's logit, in ``config.heads`` order."""
        return self.training_outputs(dense_features, sparse_features)[0]

    def training_outputs(
        self,
        dense_features: torch.Tensor,
        sparse_features: KeyedJaggedTensor,
        borrow: tuple[torch.Tensor, int] | None = None,
        members: bool = False,
        cached: dict[int, tuple[torch.Tensor | None, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every head's logit (B x H) and the pooled embeddings (B x F x D), which training penalises
        (``embedding_l2``) to regularise exactly the rows a batch used. With ``members``, an ensemble's
        logits are each of its models' (B x H x K), which training fits each on its own; the id biases, which
        they share, take the mean of the models' gradients, as one model's biases take its own.

        ``borrow`` = (positions, n): the pairs after the first n have no values for the features at these
        positions (the user side, see ``Catalog.batch``) and take them from pair ``index % n``, whose user they
        share: sampled negatives look up their user's bag once, not once each. ``cached`` maps a bag feature's
        position to (a flag per sample, or None for all of them, and the pooled values of the flagged samples'
        bags): values from a training cache (``dlrm_cli.training.bag_cache``), whose bags the KJT leaves empty."""
        embedded = self.dlrm.sparse_arch(sparse_features)
        all_cached = cached is not None and all(p in cached and cached[p][0] is None for p in self.bag_positions)
        if self.bag_positions and not all_cached:  # every sample's bags from the cache: their columns replaced below
            embedded = self._normalise_bags(embedded, sparse_features)
        if cached:
            columns = [  # no flags: every sample reads the cache
                values if flagged is None else embedded[:, position].masked_scatter(flagged.unsqueeze(1), values)
                for position, (flagged, values) in cached.items()
            ]
            embedded = _with_columns(embedded, list(cached), columns)
        biases = None
        if self.biases is not None:
            heads = len(self.config.heads)
            biases = self.biases(sparse_features).values().view(dense_features.shape[0], -1, heads * BIAS_COLUMNS)
        if borrow is not None:
            embedded = _borrowed(embedded, *borrow)
            if biases is not None:  # the user's bias (bias tables follow the feature order: user_id first)
                biases = _borrowed(biases, torch.tensor([0], device=biases.device), borrow[1])
        if biases is not None:
            biases = biases.view(biases.shape[0], biases.shape[1], -1, BIAS_COLUMNS)
        if members and self.config.ensemble > 1:
            if biases is not None:  # the same values; each model's gradient reaches them divided by K
                biases = biases.detach() + (biases - biases.detach()) / self.config.ensemble
            return self.dlrm.member_logits(dense_features, embedded, biases), embedded
        return self.dlrm.head_logits(dense_features, embedded, biases), embedded

    def squash(self, logits: torch.Tensor, head: str) -> torch.Tensor:
        """One head's logits on that head's scale (``head_scale``)."""
        return to_rating(logits, *self.head_scale(head))

    def ranking_scores(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """What ranks items for a user: the ranking head's logit where the model has one, else the rating."""
        return self.rating_and_ranking(dense_features, sparse_features)[1]

    def head_scale(self, head: str) -> tuple[float, float]:
        """(low, span) of a head's squashed output: the rating scale for the rating head, 0 to 1 (the
        probability of an interaction) for the ranking head."""
        return (self.rating_min, self.rating_span) if head == "rating" else (0.0, 1.0)

    def rating_and_ranking(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s output and ``ranking_scores``, from one pass of the model."""
        logits = self.logits(dense_features, sparse_features)
        first = self.squash(logits[:, 0], self.config.heads[0])
        if "ranking" not in self.config.heads:
            return first, first
        return first, logits[:, self.config.heads.index("ranking")]

    def _normalise_bags(self, embedded: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Divide each bag's pooled sum (B x F x D, feature order) by the square root of its length: a
        scale computed from the KJT's lengths, so the tables pool plain sums (no per-value weights, whose
        gradient FBGEMM would compute for nothing)."""
        lengths = sparse_features.lengths().view(len(self.config.tables), -1)[self.bag_positions]
        scale = torch.ones(embedded.shape[1], embedded.shape[0], dtype=embedded.dtype, device=embedded.device)
        scale[self.bag_positions] = lengths.clamp(min=1).to(embedded.dtype).rsqrt()
        return embedded * scale.t().unsqueeze(2)

    def dense_layers(self) -> tuple[list[nn.Linear], list[nn.Linear]]:
        """The linear layers of the bottom MLP and of the top MLP, in order."""
        return tuple(  # type: ignore[return-value]
            [module for module in arch.modules() if isinstance(module, nn.Linear)]
            for arch in (self.dlrm.dense_arch, self.dlrm.over_arch)
        )

    def start_at(self, rating: float) -> None:
        """Set the output layer's bias so that an untrained model predicts ``rating`` (say, the training
        mean) rather than the middle of the scale."""
        fraction = min(max((rating - self.rating_min) / self.rating_span, 1e-3), 1 - 1e-3)
        for over_arch in [self.dlrm.over_arch, *(member.over_arch for member in self.dlrm.members)]:
            output = [module for module in over_arch.modules() if isinstance(module, nn.Linear)][-1]
            with torch.no_grad():
                output.bias[0] = math.log(fraction / (1 - fraction))


class TrainingDLRM(RatingDLRM):
    """The model as training calls it: ``forward`` is ``training_outputs``, so that TorchRec's
    DistributedModelParallel and DDP, which must see every training pass go through ``forward``, wrap it as
    they wrap any model. Its weights and state-dict keys are ``RatingDLRM``'s, so a checkpoint loads into either."""

    def forward(  # type: ignore[override]
        self,
        dense_features: torch.Tensor,
        sparse_features: KeyedJaggedTensor,
        borrow: tuple[torch.Tensor, int] | None = None,
        cached: dict[int, tuple[torch.Tensor | None, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.training_outputs(dense_features, sparse_features, borrow, members=True, cached=cached)


def _with_columns(embedded: torch.Tensor, positions: list[int], columns: list[torch.Tensor]) -> torch.Tensor:
    """``embedded`` (B x F x D) with the features at ``positions`` replaced by ``columns`` (each B x D). The bag
    features come last (``Catalog``'s feature order), so the columns usually replace the trailing ones, which a
    join does with a cheaper backward than ``index_copy``'s."""
    replaced = torch.stack(columns, dim=1)
    first = embedded.shape[1] - len(positions)
    if positions == list(range(first, embedded.shape[1])):
        return torch.cat((embedded[:, :first], replaced), dim=1)
    return embedded.index_copy(1, torch.tensor(positions, device=embedded.device), replaced)


def _borrowed(embedded: torch.Tensor, positions: torch.Tensor, rows: int) -> torch.Tensor:
    """``embedded`` (B x F x D) with the features at ``positions`` of every pair after the first ``rows``
    taken from pair ``index % rows``. The copies are made by ``repeat``, whose backward adds them up in a fixed
    order: gathering them by index instead (``embedded[:, positions][index % rows]``) has a backward that
    accumulates with ``index_put_``, which on CPU adds in whatever order the threads get there, so that two
    runs with two threads drifted apart in the last bits, and then further (and it was 5x slower)."""
    copies, left = divmod(embedded.shape[0], rows)
    own = embedded[:rows].index_select(1, positions)
    taken = own.repeat(copies, 1, 1)
    if left:
        taken = torch.cat((taken, own[:left]))
    return embedded.index_copy(1, positions, taken)


def build_model(config: ModelConfig, device: torch.device | None = None) -> RatingDLRM:
    return RatingDLRM(config, device=device)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a usage error."""
    from dlrm_cli.errors import DlrmUsageError

    name = str(name)  # a Device option arrives as a StrEnum
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DlrmUsageError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise DlrmUsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def pool_bags(model: RatingDLRM, catalog: Catalog) -> tuple[RatingDLRM, Catalog]:
    """The model and catalog for scoring, with every implicit-feedback bag pooled once per entity.

    A bag is the same at every prediction (its entity's training ratings; nothing is left out), so its
    normalised sum of embeddings is computed here, for every entity, into a table of its own: one row per
    entity, looked up by the entity's row with weight 1. Scoring then reads one row where it read the whole
    bag, and the result is the same (up to float rounding) as the trained model's on the full bags."""
    if not catalog.normalised_bags:
        return model, catalog
    ebc = model.dlrm.sparse_arch.embedding_bag_collection
    state = model.state_dict()
    tables, owners = list(model.config.tables), {}
    for kind, entities in (("users", catalog.users), ("items", catalog.items)):
        pooled_bags = {}
        for name, bag in entities.bags.items():
            rows = torch.arange(bag.offsets.shape[0] - 1)
            weight = ebc.embedding_bags[table_name(name)].weight.detach()
            values, lengths = (tensor.to(weight.device) for tensor in bag.gather(rows))
            offsets = torch.cumsum(lengths, 0) - lengths
            pooled = nn.functional.embedding_bag(values, weight, offsets, mode="sum")
            pooled = pooled * lengths.clamp(min=1).to(pooled.dtype).rsqrt().unsqueeze(1)
            state[f"dlrm.sparse_arch.embedding_bag_collection.embedding_bags.{table_name(name)}.weight"] = pooled
            pooled_bags[name] = Bag.pooled(rows.shape[0])
            index = model.config.feature_names.index(name)
            tables[index] = replace(tables[index], num_embeddings=rows.shape[0], bag=False)
        owners[kind] = replace(entities, bags=pooled_bags)
    with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave training's draws alone
        pooled_model = build_model(replace(model.config, tables=tuple(tables)), device=next(model.parameters()).device)
    pooled_model.load_state_dict(state)
    pooled_model.train(model.training)
    return pooled_model, replace(catalog, **owners)
