"""Recipe ``nemo``: JSON-lines manifests with audio_filepath, text (duration is ignored: the audio is measured).

``--input`` is the manifest, or a directory holding exactly one .jsonl/.json (or ``<split>.jsonl``/
``<split>.json`` per ``--split``). Paths are relative to the manifest's directory. The id is the ``id`` field
when present, else audio_filepath. Bad entries: a line that is not JSON or has no audio_filepath.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError, Skip
from xlsr_dist.data.recipes.tables import find_per_split, resolve_path, single_split_name
from xlsr_dist.data.skip_reasons import MALFORMED_ENTRY


def read_splits(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if input_path.is_dir():
        manifests = find_per_split(input_path, (".jsonl", ".json"), splits, "manifest")
    elif input_path.is_file():
        manifests = [(single_split_name(splits, "nemo"), input_path)]
    else:
        raise PrepareError(f"--input {input_path}: no such file or directory")
    out = []
    for name, manifest in manifests:
        bad: list[Skip] = []
        out.append(SplitInput(name, ItemStore(_items(manifest, bad)), bad))
    return out


def _items(manifest: Path, bad: list[Skip]) -> Iterator[Item]:
    """The manifest's entries, read line by line as they are taken; the malformed ones are appended to ``bad``."""
    with manifest.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            ref = f"{manifest.name}:{lineno}"
            try:
                entry = json.loads(line)
                path = str(entry["audio_filepath"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.append(Skip(ref, str(manifest), MALFORMED_ENTRY, f"line {lineno}: {type(e).__name__}: {e}"))
                continue
            text = entry.get("text")
            yield Item(
                str(entry.get("id") or path),
                text if isinstance(text, str) else "",
                path,
                resolve_path(manifest.parent, path),
            )
