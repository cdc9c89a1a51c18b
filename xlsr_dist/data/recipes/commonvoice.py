"""Recipe ``commonvoice``: a Common Voice language directory, ``clips/*.mp3`` and ``train.tsv``/``dev.tsv``/
``test.tsv`` (columns path, sentence).

Splits default to those three; ``--split validated other`` picks others. The id is the clip's path as the table
writes it; the source ``clips/<path>``. Bad entries: a line with too few fields or no audio path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError, Skip
from xlsr_dist.data.recipes.tables import read_transcript_table, resolve_path

DEFAULT_SPLITS = ("train", "dev", "test")


def read_splits(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if not input_path.is_dir():
        raise PrepareError(
            f"--input {input_path}: a Common Voice language directory (clips/ + train.tsv ...) is expected"
        )
    names = list(splits) if splits else [s for s in DEFAULT_SPLITS if (input_path / f"{s}.tsv").is_file()]
    if not names:
        raise PrepareError(f"{input_path}: none of train.tsv, dev.tsv, test.tsv found")
    clips = input_path / "clips"
    out = []
    for name in names:
        table = input_path / f"{name}.tsv"
        if not table.is_file():
            raise PrepareError(f"--split {name}: {table} does not exist")
        bad: list[Skip] = []
        rows = read_transcript_table(table, bad)
        items = ItemStore(Item(path, text, f"clips/{path}", resolve_path(clips, path)) for path, text in rows)
        out.append(SplitInput(name, items, bad))
    return out
