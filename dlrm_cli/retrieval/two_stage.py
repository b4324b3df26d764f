"""Recommending in two stages: a candidate generator proposes each user's best ``candidates`` items, and a DLRM
ranker, reading each pair's retrieval features beside the user's and the item's own, orders them. The generator
reads no context; a ranker with context columns orders a user's candidates in the moment asked about (one
context row per user, None: each column at its default).

Legend: B users, C candidates per user, I item rows, P pair features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dlrm_cli.data.catalog import Catalog
from dlrm_cli.data.context import ContextRows
from dlrm_cli.model.dlrm import RatingDLRM
from dlrm_cli.retrieval.features import PAIR_FEATURES, FeatureScale, top_candidates
from dlrm_cli.retrieval.generators import Generator, masked_scores
from dlrm_cli.retrieval.history import History

Z_SCORE = PAIR_FEATURES.index("retrieval_z")
RANK_BATCH = 8192  # pairs the ranker scores at once
CANDIDATES = 100  # candidates per user, unless a run or a request says otherwise


@dataclass(frozen=True)
class Ranked:
    """B users' candidates as both stages see them."""

    scores: torch.Tensor | None  # B x I, the generator's (-inf: not recommendable), when kept
    items: torch.Tensor  # B x C, the generator's best first
    values: torch.Tensor  # B x C, their generator scores (-inf: an empty slot)
    logits: torch.Tensor  # B x C, the ranker's
    z: torch.Tensor  # B x C, the generator's score's standing among the user's scores


@dataclass
class TwoStage:
    """The two stages of a checkpoint, ready to recommend: the generator and the users' known items it scores
    from, which items it may propose (``allowed``, I), and the ranker with the catalog it reads and the scale
    of its pair features. A ranker trained before rankers read the context has a catalog without it
    (``reads_context`` False) and orders the candidates the same way in every context."""

    generator: Generator
    history: History
    allowed: torch.Tensor
    ranker: RatingDLRM
    catalog: Catalog
    scale: FeatureScale
    candidates: int = CANDIDATES
    blend: float = 0.0  # the generator's z-score's weight in the final order, chosen on validation rows
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.item_counts = self.history.item_counts()
        self.user_counts = self.history.counts()

    @property
    def reads_context(self) -> bool:
        """Whether the ranker reads context columns (its order then depends on the context asked about)."""
        return self.catalog.context is not None

    def rank(
        self, users: torch.Tensor, items: torch.Tensor, features: torch.Tensor, context: ContextRows | None = None
    ) -> torch.Tensor:
        """The second stage: the ranker's logit of each (user b, ``items[b, c]``) pair in user b's ``context``
        row (B rows; None: the default context), B x C."""
        context = context if self.reads_context else None
        pairs_users = users[:, None].expand_as(items).reshape(-1)
        pairs_items = items.reshape(-1)
        scaled = self.scale.apply(features.reshape(-1, features.shape[-1]))
        out = []
        was_training = self.ranker.training
        self.ranker.eval()
        # FBGEMM's fused training tables run only behind autograd on CPU: they score under no_grad
        fused = getattr(self.ranker, "uses_fused_kernels", False)
        with torch.no_grad() if fused else torch.inference_mode():
            for start in range(0, pairs_items.shape[0], RANK_BATCH):
                chunk = slice(start, start + RANK_BATCH)
                pairs = torch.arange(start, min(start + RANK_BATCH, pairs_items.shape[0]))
                moment = None if context is None else context.take(pairs // items.shape[1])  # each pair's user's
                dense, kjt = self.catalog.batch(
                    pairs_users[chunk], pairs_items[chunk], pair_dense=scaled[chunk], context=moment
                )
                out.append(self.ranker.logits(dense.to(self.device), kjt.to(self.device))[:, 0].float().cpu())
        self.ranker.train(was_training)
        return (torch.cat(out) if out else torch.empty(0)).view(items.shape)

    def ranked(
        self,
        users: torch.Tensor,
        candidates: int | None = None,
        keep_scores: bool = True,
        context: ContextRows | None = None,
    ) -> Ranked:
        """Both stages for B user rows, ranked in each user's ``context`` row (see ``rank``; ``keep_scores``:
        keep the generator's scores of every item)."""
        scores = self.generator_scores(users)
        count = candidates or self.candidates
        items, values, features = top_candidates(scores, count, self.item_counts, self.user_counts[users])
        empty = values == -math.inf  # past the user's last recommendable item: any row the ranker can read
        logits = self.rank(users, items.masked_fill(empty, 0), features, context)
        return Ranked(scores if keep_scores else None, items, values, logits, features[..., Z_SCORE])

    def order(self, ranked: Ranked, blend: float | None = None) -> torch.Tensor:
        """B x C: what orders the candidates, the ranker's logit blended with the generator's z-score
        (``blend``: the z-score's weight, default the checkpoint's), -inf in empty slots."""
        weight = self.blend if blend is None else blend
        mixed = ranked.logits if weight == 0 else (1 - weight) * ranked.logits + weight * ranked.z
        return mixed.masked_fill(ranked.values == -math.inf, -math.inf)

    def recommend(
        self, users: torch.Tensor, top: int, candidates: int | None = None, context: ContextRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best ``top`` items of B user rows, two stages, each user's in its ``context`` row (see ``rank``):
        items B x top and their ``order`` values (-inf in slots past a user's last recommendable item). The
        generator proposes at least ``top`` candidates."""
        ranked = self.ranked(users, max(candidates or self.candidates, top), keep_scores=False, context=context)
        best, order = torch.topk(self.order(ranked), min(top, ranked.items.shape[1]), dim=1)
        return ranked.items.gather(1, order).masked_fill(best == -math.inf, 0), best  # no item: row 0, -inf

    def full_scores(
        self, users: torch.Tensor, candidates: int | None = None, context: ContextRows | None = None
    ) -> torch.Tensor:
        """B x I float64 scores that order every item as the two stages do, each user's in its ``context`` row
        (for ``dlrm_cli.scoring.ranking.rank_metrics``): see ``spread``."""
        return self.spread(self.ranked(users, candidates, context=context))

    def spread(self, ranked: Ranked, blend: float | None = None) -> torch.Tensor:
        """B x I float64: the candidates in their ``order``, above every other item, which follow in the
        generator's order (all tied when ``ranked`` kept no scores); -inf where nothing may be recommended.
        Only the order means anything."""
        order = torch.argsort(self.order(ranked, blend), dim=1, descending=True, stable=True)
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        if ranked.scores is None:
            out = torch.full((len(ranked.items), len(self.allowed)), 1e6, dtype=torch.float64)
        else:
            plain = ranked.scores.double()
            spread = plain.abs().masked_fill(~torch.isfinite(plain), 0.0).amax(dim=1, keepdim=True) + 1.0
            out = 1e6 + plain / spread  # the other items, in (1e6 - 1, 1e6 + 1), -inf kept
        placed = (2e6 - position.double()).masked_fill(ranked.values == -math.inf, -math.inf)
        return out.scatter(1, ranked.items, placed)

    def generator_scores(self, users: torch.Tensor) -> torch.Tensor:
        """B x I: the first stage alone, -inf where nothing may be recommended."""
        return masked_scores(self.generator, self.history.matrix(users), self.allowed, self.item_counts)
