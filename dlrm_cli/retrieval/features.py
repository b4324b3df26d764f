"""What the ranking stage reads about a (user, candidate) pair besides the user's and the item's own features:
the generator's score, the score's standing among the user's scores (a z-score), the candidate's rank (log),
and how active the item and the user are (log counts). One function computes them for training pairs and for
the candidates of a recommendation alike, so that the ranker sees the same features in both.

Legend: B users, C items per user, I item rows, P = ``len(PAIR_FEATURES)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAIR_FEATURES = ("retrieval_score", "retrieval_z", "retrieval_log_rank", "item_log_count", "user_log_count")


@dataclass(frozen=True)
class FeatureScale:
    """Each pair feature's mean and standard deviation over the ranker's training pairs."""

    mean: torch.Tensor  # P
    std: torch.Tensor  # P

    @classmethod
    def of(cls, raw: torch.Tensor) -> FeatureScale:
        return cls(raw.mean(0), raw.std(0).clamp(min=1e-6))

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std


def standing(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's mean and standard deviation of the generator's finite scores (B x I -> B, B)."""
    finite = torch.isfinite(scores)
    count = finite.sum(dim=1).clamp(min=2)
    plain = torch.where(finite, scores, torch.zeros_like(scores))
    mean = plain.sum(dim=1) / count
    std = (((plain - mean[:, None]) * finite).pow(2).sum(dim=1) / (count - 1)).sqrt().clamp(min=1e-6)
    return mean, std


def pair_features(
    scores: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    ranks: torch.Tensor,
    item_counts: torch.Tensor,
    user_counts: torch.Tensor,
) -> torch.Tensor:
    """The raw features of pairs (any shape S, every argument of that shape or broadcast to it): S x P.

    Args:
        scores: the generator's score of each pair.
        mean, std: the user's ``standing``.
        ranks: the pair's 0-based rank among the user's recommendable items.
        item_counts: the item's known users; user_counts: the user's known items.
    """
    shape = torch.broadcast_shapes(scores.shape, mean.shape, ranks.shape, item_counts.shape, user_counts.shape)
    columns = (
        scores,
        (scores - mean) / std,
        ranks.float().log1p(),
        item_counts.float().log1p(),
        user_counts.float().log1p(),
    )
    return torch.stack([column.expand(shape).float() for column in columns], dim=-1)


def top_candidates(
    scores: torch.Tensor, count: int, item_counts: torch.Tensor, user_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``count`` items of each of B users (``scores`` B x I, -inf where not recommendable;
    ``user_counts``: B) and their raw features: items B x C, scores B x C, features B x C x P. Slots past a
    user's last recommendable item hold -inf scores."""
    count = min(count, scores.shape[1])
    values, items = torch.topk(scores, count, dim=1)
    mean, std = standing(scores)
    ranks = torch.arange(count).expand_as(items)
    plain = torch.where(torch.isfinite(values), values, mean[:, None])
    features = pair_features(plain, mean[:, None], std[:, None], ranks, item_counts[items], user_counts[:, None])
    return items, values, features
