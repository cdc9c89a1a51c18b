"""Recipes: one module per corpus layout, each turning a corpus on disk into the items of its splits (and the
entries it had to reject), as lhotse keeps one recipe per corpus.

``folder`` (audio files + a transcript table), ``audio`` (audio files without transcripts), ``commonvoice``,
``librispeech``, ``nemo`` (JSON-lines manifests) and ``hf`` (a ``datasets`` dataset); each module's docstring
describes its layout. This package lists them and guesses the layout of an ``--input`` (``--layout auto``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from xlsr_dist.data.recipes import audio_only, commonvoice, folder, librispeech, nemo
from xlsr_dist.data.recipes.hf import is_saved_dataset
from xlsr_dist.data.recipes.item_store import SplitInput
from xlsr_dist.data.recipes.items import PrepareError

LAYOUTS = ("auto", "folder", "commonvoice", "librispeech", "nemo", "hf", "audio")
AUDIO_ONLY = "audio"
"""The layout of audio without transcripts (pretraining): given explicitly, never guessed."""

# The recipes that read local files and take (input path, --split); hf takes its own flags.
FILE_RECIPES: dict[str, Callable[[Path, Sequence[str] | None], list[SplitInput]]] = {
    "folder": folder.read_splits,
    "commonvoice": commonvoice.read_splits,
    "librispeech": librispeech.read_splits,
    "nemo": nemo.read_splits,
    AUDIO_ONLY: audio_only.read_splits,
}


def detect_layout(input_ref: str) -> str:
    """The layout ``--input`` looks like; PrepareError when it cannot tell."""
    p = Path(input_ref).expanduser()
    if not p.exists():
        if "/" in input_ref and not input_ref.startswith((".", "/", "~")):
            return "hf"  # looks like a hub name (owner/name)
        raise PrepareError(f"--input {input_ref}: no such file or directory")
    if p.is_file():
        if p.suffix.lower() in (".json", ".jsonl"):
            return "nemo"
        if p.suffix.lower() in (".tsv", ".csv"):
            return "folder"
        raise PrepareError(
            f"--input {p}: cannot tell the layout from a {p.suffix or 'suffix-less'} file; give --layout"
        )
    if is_saved_dataset(p) or (p / "dataset_info.json").is_file():
        return "hf"
    if (p / "clips").is_dir() and any((p / f"{s}.tsv").is_file() for s in ("train", "dev", "test", "validated")):
        return "commonvoice"
    top = [x.suffix.lower() for x in p.iterdir() if x.is_file()]
    if any(x in (".json", ".jsonl") for x in top):
        return "nemo"
    if any(x in (".tsv", ".csv") for x in top):
        return "folder"
    if next(p.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    if next(p.rglob("*.parquet"), None) is not None:
        return "hf"
    raise PrepareError(f"--input {p}: cannot tell the layout; give --layout {{{','.join(LAYOUTS[1:])}}}")
