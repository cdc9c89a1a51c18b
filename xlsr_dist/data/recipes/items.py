"""What a recipe reads from a corpus: items, the entries it rejected (Skip), audio kept in rows, and PrepareError.
A split's whole input (SplitInput) is in item_store.py, beside the table that holds its items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class PrepareError(Exception):
    """Input prepare cannot work with at all (wrong layout, no transcript column, ...); the message says why."""


@dataclass(frozen=True)
class Item:
    id: str
    text: str  # as the corpus writes it; normalised when converted
    source: str  # the original path or reference, kept in the shard's source column
    audio: str | int  # a file path, or a row of the split's RowAudio


@dataclass
class Skip:
    id: str
    source: str
    reason: str  # one of xlsr_dist.data.skip_reasons or xlsr_dist.audio's reasons
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "reason": self.reason, "detail": self.detail}


class RowAudio(Protocol):
    """Audio kept in the rows of a dataset rather than in files (an item's ``audio`` is then its row number).

    Handed to every decoding worker process, so it must pickle.
    """

    def load(self, row: int, max_seconds: float) -> np.ndarray:
        """Row ``row``'s audio as float32 mono 16 kHz; raises xlsr_dist.audio.AudioError."""
        ...
