"""Recipe ``folder``: audio files plus a transcript table.

``--input`` is the .tsv/.csv file, or a directory holding exactly one (or ``<split>.tsv``/``<split>.csv`` per
``--split``). The audio-path column is the first of path, file, file_name, filename, audio, audio_path,
audio_filepath, filepath, wav; the transcript column the first of text, sentence, transcript, transcription,
normalized_text, label (case-insensitive). Paths are relative to the table's directory. The id is the path as
written. Bad entries: a line with too few fields or no audio path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError, Skip
from xlsr_dist.data.recipes.tables import find_per_split, read_transcript_table, resolve_path, single_split_name


def read_splits(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if input_path.is_dir():
        tables = find_per_split(input_path, (".tsv", ".csv"), splits, "transcript table")
    elif input_path.is_file():
        tables = [(single_split_name(splits, "folder"), input_path)]
    else:
        raise PrepareError(f"--input {input_path}: no such file or directory")
    out = []
    for name, table in tables:
        bad: list[Skip] = []
        rows = read_transcript_table(table, bad)
        items = ItemStore(Item(path, text, path, resolve_path(table.parent, path)) for path, text in rows)
        out.append(SplitInput(name, items, bad))
    return out
