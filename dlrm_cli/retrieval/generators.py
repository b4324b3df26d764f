"""Candidate generators: models fitted in closed form on the known interactions (a ``History``) that score
every item for a user. EASE is exact and strongest on catalogues that fit its items x items matrix; PureSVD
keeps ``rank`` factors per item, so its memory and fit time grow with the items, not with their square.

Legend: B users scored at once, I item rows, r factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dlrm_cli.retrieval.history import History
from dlrm_cli.runtime.quiet import quiet_library_logs

EASE_MAX_ITEMS = 20_000  # auto: EASE up to this many items (a 1.6 GB matrix), PureSVD above
EASE_LAMBDA = 500.0  # EASE's L2 weight (Steck, WWW 2019); chosen on the MovieLens 1M subset's validation rows
SVD_RANK = 64
GENERATORS = ("auto", "ease", "svd")


@dataclass(frozen=True)
class Ease:
    """EASE (Steck, WWW 2019): item-item weights W (I x I, zero diagonal) from the closed form on the binary
    interaction matrix X; a user's scores are x_u W."""

    weights: torch.Tensor
    regularisation: float = EASE_LAMBDA
    kind = "ease"

    @classmethod
    def fit(cls, history: History, regularisation: float = EASE_LAMBDA) -> Ease:
        matrix = history.sparse()
        with quiet_library_logs():  # torch calls its sparse products beta
            gram = torch.sparse.mm(matrix.t(), matrix).to_dense().double()
        gram.diagonal().add_(regularisation)
        inverse = torch.linalg.inv(gram)
        del gram
        weights = (-inverse / inverse.diagonal()[None, :]).float()
        weights.diagonal().zero_()
        return cls(weights, regularisation)

    def scores(self, known: torch.Tensor) -> torch.Tensor:
        """B x I scores of every item for B users, from their B x I rows of known items."""
        return known @ self.weights

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": self.weights, "regularisation": self.regularisation}


@dataclass(frozen=True)
class PureSvd:
    """PureSVD (Cremonesi et al., RecSys 2010) on the binary interaction matrix: its top ``r`` right singular
    vectors V (I x r); a user's scores are x_u V V^T."""

    factors: torch.Tensor
    kind = "svd"

    @classmethod
    def fit(cls, history: History, rank: int = SVD_RANK, seed: int = 0) -> PureSvd:
        matrix = history.sparse()
        rank = max(1, min(rank, min(matrix.shape) - 1))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            _, _, v = torch.svd_lowrank(matrix, q=min(rank + 10, min(matrix.shape)), niter=6)
        finally:
            torch.random.set_rng_state(generator_state)
        return cls(v[:, :rank].contiguous())

    def scores(self, known: torch.Tensor) -> torch.Tensor:
        return (known @ self.factors) @ self.factors.T

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "factors": self.factors}


Generator = Ease | PureSvd


def fit_generator(history: History, kind: str = "auto") -> Generator:
    """The generator ``kind`` (``auto``: EASE up to ``EASE_MAX_ITEMS`` items, PureSVD above) fitted on ``history``."""
    if kind not in GENERATORS:
        raise ValueError(f"retrieval must be one of {', '.join(GENERATORS)}, got {kind!r}")
    if kind == "auto":
        kind = "ease" if history.n_items <= EASE_MAX_ITEMS else "svd"
    return Ease.fit(history) if kind == "ease" else PureSvd.fit(history)


def check_generator(kind: str, items: int) -> None:
    """Refuse EASE on a catalogue whose items x items matrix would not fit (ValueError, for the run to word)."""
    if kind == "ease" and items > EASE_MAX_ITEMS:
        size = items**2 * 4 / 2**30
        raise ValueError(
            f"--retrieval ease keeps an items x items matrix: {items:,} items would take {size:.1f} GiB, and three "
            f"times that to fit; use --retrieval auto or svd (PureSVD) above {EASE_MAX_ITEMS:,} items"
        )


def generator_from_state(state: dict[str, Any]) -> Generator:
    if state["kind"] == "ease":
        return Ease(state["weights"], float(state["regularisation"]))
    if state["kind"] == "svd":
        return PureSvd(state["factors"])
    raise ValueError(f"unknown candidate generator {state['kind']!r}")


def masked_scores(
    generator: Generator, known: torch.Tensor, allowed: torch.Tensor, popularity: torch.Tensor | None = None
) -> torch.Tensor:
    """B x I scores with -inf on the items a user knows and on the items that cannot be recommended
    (``allowed``: I, bool). A user who knows no item scores nothing with either generator (all zeros): with
    ``popularity`` (I: each item's known users) such a user's scores are the items' shares of the largest."""
    scores = generator.scores(known)
    if popularity is not None:
        empty = (known.sum(dim=1) == 0)[:, None]
        scores = torch.where(empty, (popularity.float() / popularity.max().clamp(min=1))[None, :], scores)
    return scores.masked_fill((known > 0) | ~allowed[None, :], -math.inf)
