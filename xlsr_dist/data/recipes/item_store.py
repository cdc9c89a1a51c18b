"""A split's input as a recipe hands it to prepare (SplitInput), its items in a temporary on-disk table instead of
Python objects: what prepare holds for the whole split (ids to sort, transcripts and paths to convert) costs no
memory per item, whatever the size of the corpus.

Recipes add items as they read them (``add_all``); prepare reads them back sorted by id, the first of each id
(``ordered``), and the repeats (``duplicates``). The table is SQLite's private temporary database (in ``TMPDIR``),
deleted when the store is closed or collected. Strings are stored as UTF-8 bytes (``surrogatepass``, so any
Python string round-trips): byte order is code-point order, so SQLite sorts ids exactly as Python sorts them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from xlsr_dist.data.recipes.items import Item, RowAudio, Skip

_BATCH = 4096


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


class ItemStore:
    """The items of one split, in the order they were listed; ``len`` counts them, repeated ids included."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._db = sqlite3.connect("")  # "": a private on-disk temporary database, removed on close
        self._db.execute(
            "CREATE TABLE items (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, text BLOB, source BLOB, audio)"
        )
        self._listed = 0
        self._unique: int | None = None
        self.add_all(items)

    def add_all(self, items: Iterable[Item]) -> None:
        rows = (
            (
                _encode(it.id),
                _encode(it.text),
                _encode(it.source),
                it.audio if isinstance(it.audio, int) else _encode(it.audio),
            )
            for it in items
        )
        with self._db:
            while batch := list(islice(rows, _BATCH)):
                self._db.executemany("INSERT INTO items (id, text, source, audio) VALUES (?, ?, ?, ?)", batch)
                self._listed += len(batch)
        self._unique = None

    def __len__(self) -> int:
        return self._listed

    def unique_count(self) -> int:
        """How many distinct ids."""
        if self._unique is None:
            self._sort()
            self._unique = int(self._db.execute("SELECT COUNT(DISTINCT id) FROM items").fetchone()[0])
        return self._unique

    def _sort(self) -> None:
        self._db.execute("CREATE INDEX IF NOT EXISTS items_by_id ON items (id, seq)")

    def _by_id(self) -> Iterator[tuple[bool, Item]]:
        """(first of its id, item) for every item, by id, then in the order listed."""
        self._sort()
        previous = None
        cursor = self._db.execute("SELECT id, text, source, audio FROM items ORDER BY id, seq")
        for uid, text, source, audio in cursor:
            yield (
                uid != previous,
                Item(_decode(uid), _decode(text), _decode(source), audio if isinstance(audio, int) else _decode(audio)),
            )
            previous = uid

    def ordered(self, start: int = 0) -> Iterator[Item]:
        """The first item of each id, sorted by id, from the ``start``-th on."""
        return islice((it for first, it in self._by_id() if first), start, None)

    def duplicates(self) -> Iterator[Item]:
        """The items whose id was listed before, by id, then in the order listed."""
        return (it for first, it in self._by_id() if not first)

    def close(self) -> None:
        self._db.close()


@dataclass
class SplitInput:
    name: str
    items: ItemStore  # on disk, not a list: a corpus of millions of utterances costs no memory per item
    skipped: list[Skip] = field(default_factory=list)  # entries rejected while reading the layout
    row_audio: RowAudio | None = None  # for items whose audio is a row number
