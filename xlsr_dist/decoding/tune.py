"""The LM weight (alpha) and word bonus (beta) chosen on a dev set, the grid split across ranks.

Every rank holds the whole dev set's log-probabilities (the same batches, the same model: the same numbers) and
decodes grid points index = rank, rank + N, ...; the results are gathered (world.all_gather_object) and every rank
makes the same choice: fewest errors of the primary kind (words, or characters for languages written without
spaces), then fewest of the other kind, then the lowest grid index. So N ranks choose what one rank chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xlsr_dist.decoding.beam import BeamDecoder
from xlsr_dist.world import all_gather_object

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_BETAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)

ErrorCounter = Callable[[Sequence[str]], tuple[int, int, int, int]]
"""hypotheses (in the dev set's order) -> (word errors, words, character errors, characters)"""


@dataclass(frozen=True)
class GridPoint:
    index: int
    alpha: float
    beta: float
    word_errors: int
    words: int
    char_errors: int
    chars: int

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.chars, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wer": self.wer, "cer": self.cer}


def grid(alphas: Sequence[float], betas: Sequence[float]) -> list[tuple[float, float]]:
    """Grid points in one fixed order (alpha-major, as given): the index every rank and the tie-break use."""
    return [(float(a), float(b)) for a in alphas for b in betas]


def choose(points: Sequence[GridPoint], by_words: bool) -> GridPoint:
    def key(p: GridPoint) -> tuple[int, int, int]:
        first, second = (p.word_errors, p.char_errors) if by_words else (p.char_errors, p.word_errors)
        return first, second, p.index

    return min(points, key=key)


def tune(
    decoder: BeamDecoder,
    log_probs: Sequence[np.ndarray],
    count_errors: ErrorCounter,
    alphas: Sequence[float],
    betas: Sequence[float],
    rank: int,
    world_size: int,
    by_words: bool = True,
) -> tuple[GridPoint, list[GridPoint]]:
    """Collective (one all_gather_object). Returns (the chosen point, every point in grid order); leaves the
    decoder at the chosen alpha/beta."""
    points = grid(alphas, betas)
    mine = []
    for index in range(rank, len(points), world_size):
        alpha, beta = points[index]
        decoder.reset_params(alpha, beta)
        counts = count_errors([decoder.decode_text(lp) for lp in log_probs])
        mine.append(GridPoint(index, alpha, beta, *counts))
    gathered = sorted((p for part in all_gather_object(mine) for p in part), key=lambda p: p.index)
    if [p.index for p in gathered] != list(range(len(points))):
        raise RuntimeError(f"LM tuning: the ranks returned grid points {[p.index for p in gathered]}")
    best = choose(gathered, by_words)
    decoder.reset_params(best.alpha, best.beta)
    return best, gathered
