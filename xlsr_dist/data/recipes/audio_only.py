"""Recipe ``audio``: audio without transcripts, for pretraining (``--layout audio``; never guessed).

``--input`` is a directory (every audio file under it, recursively: .wav .flac .mp3 .ogg .opus .m4a .aac .webm) or
a list file (one audio path per line, relative to the list's directory; blank lines and ``#`` comments ignored).
One split: the one ``--split`` names, else train. The id is the path relative to the directory (or as the list
writes it); rows keep an empty text and the split's manifest says ``"unlabelled": true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError
from xlsr_dist.data.recipes.tables import resolve_path, single_split_name

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")


def read_splits(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    name = single_split_name(splits, "audio")
    if input_path.is_dir():
        files = sorted(p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        paths = [str(p.relative_to(input_path)) for p in files]
        base = input_path
    elif input_path.is_file():
        lines = (line.strip() for line in input_path.read_text(encoding="utf-8").splitlines())
        paths = [line for line in lines if line and not line.startswith("#")]
        base = input_path.parent
    else:
        raise PrepareError(f"--input {input_path}: no such file or directory")
    items = ItemStore(Item(path, "", path, resolve_path(base, path)) for path in paths)
    return [SplitInput(name, items, [])]
