"""Recipe ``librispeech``: ``*.trans.txt`` files (``ID TEXT`` lines) beside ``ID.flac``.

``--split`` names sub-directories of ``--input`` (e.g. train-clean-100 dev-clean); without it the whole tree is
one split, train. The id is the utterance ID; the source the audio path relative to ``--input``. An utterance
whose audio file is absent is listed anyway and skipped as a missing file when converted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError

# Tried in this order beside the transcript; .flac is assumed (and reported missing) when none exists.
AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")


def _items(root: Path, base: Path) -> Iterator[Item]:
    for transcripts in sorted(root.rglob("*.trans.txt")):
        for line in transcripts.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            folder = transcripts.parent
            audio = next(
                (folder / f"{uid}{s}" for s in AUDIO_SUFFIXES if (folder / f"{uid}{s}").exists()),
                folder / f"{uid}.flac",
            )
            yield Item(uid, text, str(audio.relative_to(base)), str(audio))


def read_splits(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if not input_path.is_dir():
        raise PrepareError(f"--input {input_path}: a LibriSpeech directory is expected")
    roots = [(s, input_path / s) for s in splits] if splits else [("train", input_path)]
    out = []
    for name, root in roots:
        if not root.is_dir():
            raise PrepareError(f"--split {name}: {root} is not a directory")
        items = ItemStore(_items(root, input_path))
        if not items:
            raise PrepareError(f"{root}: no *.trans.txt files")
        out.append(SplitInput(name, items))
    return out
