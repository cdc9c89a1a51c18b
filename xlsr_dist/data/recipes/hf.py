"""Recipe ``hf``: a ``datasets`` dataset.

``--input`` is a directory written by ``save_to_disk``, a local data directory ``load_dataset`` reads (e.g.
Parquet files), or a hub name when online (``--hf_config``). ``--hf_split`` selects the dataset's splits (default
train), written under the same names unless ``--split`` renames them. Audio is taken undecoded
(``Audio(decode=False)``) and decoded by prepare's workers with soundfile (``DatasetAudio``). The transcript column
is ``--hf_text_column`` or the first of the table recipes' transcript names; the id ``--hf_id_column`` (default
``id`` when present, else the row number).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_dist.audio import MISSING, AudioError, decode_bytes, load_audio
from xlsr_dist.data.recipes.item_store import ItemStore, SplitInput
from xlsr_dist.data.recipes.items import Item, PrepareError
from xlsr_dist.data.recipes.tables import TEXT_COLUMNS, resolve_path

# Rows of the text and id columns read at a time.
_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class DatasetAudio:
    """The audio column of a loaded dataset split, as RowAudio: a row's bytes, or its path relative to ``base``."""

    dataset: Any
    audio_column: str
    base: str

    def load(self, row: int, max_seconds: float) -> np.ndarray:
        value = self.dataset[row][self.audio_column]
        if value is None:
            raise AudioError(MISSING, "no audio in the dataset row")
        if isinstance(value, dict) and value.get("bytes"):
            return decode_bytes(value["bytes"], max_seconds)
        path = value.get("path") if isinstance(value, dict) else value
        if not path:
            raise AudioError(MISSING, "neither bytes nor path in the dataset row")
        return load_audio(resolve_path(Path(self.base), str(path)), max_seconds)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def read_splits(
    input_ref: str,
    splits: Sequence[str] | None,
    hf_splits: Sequence[str],
    audio_column: str,
    text_column: str,
    id_column: str,
    config_name: str | None,
    cache_dir: str | None,
) -> list[SplitInput]:
    import datasets  # slow to import; only this layout needs it

    if splits and len(splits) != len(hf_splits):
        raise PrepareError(f"--split {list(splits)} must name one output split per --hf_split {list(hf_splits)}")
    path = Path(input_ref).expanduser()
    out = []
    loaded: Any = None
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    for i, hf_split in enumerate(hf_splits):
        try:
            if loaded is None:
                ds = datasets.load_dataset(
                    str(path) if path.exists() else input_ref, config_name, split=hf_split, cache_dir=cache_dir
                )
            elif isinstance(loaded, datasets.DatasetDict):
                if hf_split not in loaded:
                    raise PrepareError(f"--hf_split {hf_split}: {input_ref} has splits {list(loaded)}")
                ds = loaded[hf_split]
            else:
                ds = loaded
        except PrepareError:
            raise
        except ImportError as e:
            raise PrepareError(
                f"--input {input_ref}: datasets needs an optional package to build this dataset ({e}); for a "
                "folder of audio files with a metadata table use --layout folder"
            ) from e
        except Exception as e:  # datasets raises many types for a missing dataset/split/config
            raise PrepareError(
                f"--input {input_ref} (--hf_split {hf_split}): cannot load: {type(e).__name__}: {e}"
            ) from e
        columns = ds.column_names
        audio_col = (
            audio_column
            if audio_column in columns
            else next((c for c, f in ds.features.items() if isinstance(f, datasets.Audio)), None)
        )
        if audio_col is None:
            raise PrepareError(f"--hf_audio_column {audio_column}: not a column of {input_ref} ({columns})")
        text_col = text_column or next((c for c in TEXT_COLUMNS if c in columns), "")
        if text_col not in columns:
            raise PrepareError(
                f"--hf_text_column {text_column or '(auto)'}: no transcript column in {input_ref} "
                f"(columns {columns}; auto-detection looks for {', '.join(TEXT_COLUMNS)})"
            )
        id_col = id_column or ("id" if "id" in columns else "")
        if id_col and id_col not in columns:
            raise PrepareError(f"--hf_id_column {id_col}: not a column of {input_ref} ({columns})")
        # datasets 5 decodes only through torchcodec: take the encoded bytes/path and decode with soundfile.
        ds = ds.cast_column(audio_col, datasets.Audio(decode=False))
        items = ItemStore(_items(ds, text_col, id_col, f"{input_ref}[{hf_split}]"))
        name = splits[i] if splits else hf_split
        base = str(path if path.is_dir() else Path.cwd())
        out.append(SplitInput(name, items, [], DatasetAudio(ds, audio_col, base)))
    return out


def _items(ds: Any, text_col: str, id_col: str, source: str) -> Iterator[Item]:
    """The dataset's rows as items (``source[k]`` for row k), read a batch of the text and id columns at a time."""
    width = max(9, len(str(len(ds))))
    columns = list(dict.fromkeys([text_col] + ([id_col] if id_col else [])))
    k = 0
    for batch in ds.select_columns(columns).iter(batch_size=_BATCH_ROWS):
        texts = batch[text_col]
        ids = [str(x) for x in batch[id_col]] if id_col else [f"{k + j:0{width}d}" for j in range(len(texts))]
        for uid, text in zip(ids, texts, strict=True):
            yield Item(uid, text if isinstance(text, str) else "", f"{source}[{k}]", k)
            k += 1
