"""What every recipe hands to prepare: the items of each split, the entries it rejected, and PrepareError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # item_store imports Item from here
    from xlsr_dist.data.recipes.item_store import ItemStore


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


@dataclass
class SplitInput:
    name: str
    items: ItemStore  # on disk, not a list: a corpus of millions of utterances costs no memory per item
    skipped: list[Skip] = field(default_factory=list)  # entries rejected while reading the layout
    row_audio: RowAudio | None = None  # for items whose audio is a row number
