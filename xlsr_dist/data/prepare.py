"""Corpus preparation: the layouts people have -> Parquet shards + manifest + report (``python -m xlsr_dist.prepare``).

Layouts (``--layout``, default ``auto`` guesses from ``--input``):
- ``folder``: audio files plus a transcript table. ``--input`` is the .tsv/.csv file, or a directory holding exactly
  one (or ``<split>.tsv``/``<split>.csv`` per ``--split``). The audio-path column is the first of path, file,
  file_name, filename, audio, audio_path, audio_filepath, filepath, wav; the transcript column the first of text,
  sentence, transcript, transcription, normalized_text, label (case-insensitive). Paths are relative to the table's
  directory. The id is the path as written.
- ``commonvoice``: a Common Voice language directory: ``clips/*.mp3`` and ``train.tsv``/``dev.tsv``/``test.tsv``
  (columns path, sentence). Splits default to those three; ``--split validated other`` picks others. Id: path.
- ``librispeech``: ``*.trans.txt`` files (``ID TEXT`` lines) beside ``ID.flac``. ``--split`` names sub-directories
  of ``--input`` (e.g. train-clean-100 dev-clean); without it the whole tree is one split. Id: the utterance ID.
- ``nemo``: JSON-lines manifests with audio_filepath, text (duration is ignored: the audio is measured). ``--input``
  is the manifest or a directory as for ``folder``. Id: the ``id`` field when present, else audio_filepath.
- ``hf``: a ``datasets`` dataset: a directory written by ``save_to_disk``, a local data directory
  ``load_dataset`` reads (e.g. Parquet files), or a hub name when online (``--hf_config``). ``--hf_split`` selects
  the dataset's splits (default train), written under the same names unless ``--split`` renames them. Audio is
  taken undecoded (``Audio(decode=False)``) and decoded here with soundfile. Id: ``--hf_id_column`` (default
  ``id`` when present, else the row number).
Output: ``<output>/<split>/shard-NNNNN-of-NNNNN.parquet`` (16 kHz mono FLAC, see ``xlsr_dist.data.shards``),
``manifest.json`` (counts, hours, duration histogram, character set, shard checksums) and ``report.json`` (every
skipped item with its id and reason); one summary line per split is printed.

Each item is converted (channels averaged to mono, resampled to 16 kHz with soxr, stored as PCM_16 FLAC) or
skipped with a reason: missing or unreadable audio, truncated audio (the header promises more than the file holds),
zero-length or non-finite audio, audio longer than ``--max_duration_in_seconds``, an empty transcript (before or
after normalisation), more than ``--max_chars_per_second`` characters per second of audio (a transcript CTC cannot
align), a duplicate id, a malformed table/manifest line. Transcripts are normalised with ``xlsr_dist.text.normalize``
(lower case, digits spelled out, accents folded to ASCII, punctuation removed, apostrophes kept inside words).

Items are sorted by id and cut into contiguous shards, so a re-run makes the same plan; a shard whose file, row
count and checksum match the sidecar of the same plan (``.prepare/``) is kept, anything else is rebuilt.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xlsr_dist import audio as A
from xlsr_dist.data import shards as S
from xlsr_dist.text import normalize

LAYOUTS = ("auto", "folder", "commonvoice", "librispeech", "nemo", "hf")
PATH_COLUMNS = ("path", "file", "file_name", "filename", "audio", "audio_path", "audio_filepath", "filepath", "wav")
TEXT_COLUMNS = ("text", "sentence", "transcript", "transcription", "normalized_text", "label")
AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
PLAN_VERSION = 1
SIDECAR_DIR = ".prepare"
# A worker that returns nothing for this long has died or hung on one file (a crash inside a native decoder
# would otherwise leave multiprocessing.Pool waiting forever).
RESULT_TIMEOUT_S = 900.0

# Skip reasons that are not audio errors.
EMPTY_TEXT = "empty transcript"
TEXT_TOO_LONG = "transcript too long for audio"
DUPLICATE = "duplicate id"
MALFORMED = "malformed entry"


class PrepareError(Exception):
    """Input prepare cannot work with at all (wrong layout, no transcript column, ...); the message says why."""


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    source: str
    audio: str | int  # a file path, or a row of the hf dataset


@dataclass
class Skip:
    id: str
    source: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass
class SplitInput:
    name: str
    items: list[Item]
    skipped: list[Skip] = field(default_factory=list)  # entries rejected while reading the layout
    hf: dict[str, Any] | None = None  # dataset + audio column for hf items


@dataclass(frozen=True)
class Settings:
    max_duration_in_seconds: float = 30.0
    max_chars_per_second: float = 25.0

    def key(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "max_duration_in_seconds": self.max_duration_in_seconds,
            "max_chars_per_second": self.max_chars_per_second,
        }


# ----------------------------------------------------------------------------------------------- layouts


def _read_table(path: Path) -> tuple[list[dict[str, str]], list[Skip], str, str]:
    """Rows of a .tsv/.csv transcript table, with the detected path and text column names."""
    # newline="": only \n, \r, \r\n end a row (str.splitlines would also split on U+2028 inside a sentence).
    text = io.StringIO(path.read_text(encoding="utf-8-sig", errors="replace"), newline="")
    first = text.readline()
    text.seek(0)
    tsv = path.suffix.lower() == ".tsv" or (path.suffix.lower() != ".csv" and "\t" in first)
    # Common Voice sentences contain unbalanced quotes: TSVs are split on tabs only.
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise PrepareError(f"{path}: empty transcript table") from None
    lower = [h.strip().lower() for h in header]
    path_col = next((c for c in PATH_COLUMNS if c in lower), None)
    text_col = next((c for c in TEXT_COLUMNS if c in lower), None)
    if path_col is None or text_col is None:
        missing = "audio path" if path_col is None else "transcript"
        wanted = PATH_COLUMNS if path_col is None else TEXT_COLUMNS
        raise PrepareError(
            f"{path}: cannot tell which column holds the {missing} (looked for {', '.join(wanted)}); the header is "
            f"{header}; rename that column"
        )
    pi, ti = lower.index(path_col), lower.index(text_col)
    rows: list[dict[str, str]] = []
    bad: list[Skip] = []
    for lineno, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) <= max(pi, ti) or not fields[pi].strip():
            bad.append(
                Skip(
                    f"{path.name}:{lineno}",
                    str(path),
                    MALFORMED,
                    f"line {lineno} has {len(fields)} fields or no audio path",
                )
            )
            continue
        rows.append({"path": fields[pi].strip(), "text": fields[ti], "line": str(lineno)})
    return rows, bad, path_col, text_col


def _resolve(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else base / q)


def _find_per_split(
    directory: Path, suffixes: tuple[str, ...], splits: Sequence[str] | None, what: str
) -> list[tuple[str, Path]]:
    if splits:
        out = []
        for s in splits:
            found = [directory / f"{s}{suf}" for suf in suffixes if (directory / f"{s}{suf}").is_file()]
            if not found:
                raise PrepareError(f"--split {s}: no {' or '.join(s + x for x in suffixes)} in {directory}")
            out.append((s, found[0]))
        return out
    found = sorted(p for p in directory.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if len(found) != 1:
        raise PrepareError(
            f"{directory}: expected exactly one {what} ({'/'.join(suffixes)}), found "
            f"{[p.name for p in found] or 'none'}; pass the file as --input or name splits with --split"
        )
    return [("train", found[0])]


def _single_split_name(splits: Sequence[str] | None, layout: str) -> str:
    if splits and len(splits) > 1:
        raise PrepareError(f"--layout {layout} with a single --input file writes one split; got --split {splits}")
    return splits[0] if splits else "train"


def read_folder(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if input_path.is_dir():
        tables = _find_per_split(input_path, (".tsv", ".csv"), splits, "transcript table")
    elif input_path.is_file():
        tables = [(_single_split_name(splits, "folder"), input_path)]
    else:
        raise PrepareError(f"--input {input_path}: no such file or directory")
    out = []
    for name, table in tables:
        rows, bad, _, _ = _read_table(table)
        items = [Item(r["path"], r["text"], r["path"], _resolve(table.parent, r["path"])) for r in rows]
        out.append(SplitInput(name, items, bad))
    return out


def read_commonvoice(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if not input_path.is_dir():
        raise PrepareError(
            f"--input {input_path}: a Common Voice language directory (clips/ + train.tsv ...) is expected"
        )
    names = list(splits) if splits else [s for s in ("train", "dev", "test") if (input_path / f"{s}.tsv").is_file()]
    if not names:
        raise PrepareError(f"{input_path}: none of train.tsv, dev.tsv, test.tsv found")
    clips = input_path / "clips"
    out = []
    for name in names:
        table = input_path / f"{name}.tsv"
        if not table.is_file():
            raise PrepareError(f"--split {name}: {table} does not exist")
        rows, bad, _, _ = _read_table(table)
        items = [Item(r["path"], r["text"], f"clips/{r['path']}", _resolve(clips, r["path"])) for r in rows]
        out.append(SplitInput(name, items, bad))
    return out


def _librispeech_items(root: Path, base: Path) -> tuple[list[Item], list[Skip]]:
    items, bad = [], []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = next(
                (trans.parent / f"{uid}{s}" for s in AUDIO_SUFFIXES if (trans.parent / f"{uid}{s}").exists()),
                trans.parent / f"{uid}.flac",
            )
            items.append(Item(uid, text, str(audio.relative_to(base)), str(audio)))
    return items, bad


def read_librispeech(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if not input_path.is_dir():
        raise PrepareError(f"--input {input_path}: a LibriSpeech directory is expected")
    roots = [(s, input_path / s) for s in splits] if splits else [("train", input_path)]
    out = []
    for name, root in roots:
        if not root.is_dir():
            raise PrepareError(f"--split {name}: {root} is not a directory")
        items, bad = _librispeech_items(root, input_path)
        if not items:
            raise PrepareError(f"{root}: no *.trans.txt files")
        out.append(SplitInput(name, items, bad))
    return out


def read_nemo(input_path: Path, splits: Sequence[str] | None) -> list[SplitInput]:
    if input_path.is_dir():
        manifests = _find_per_split(input_path, (".jsonl", ".json"), splits, "manifest")
    elif input_path.is_file():
        manifests = [(_single_split_name(splits, "nemo"), input_path)]
    else:
        raise PrepareError(f"--input {input_path}: no such file or directory")
    out = []
    for name, manifest in manifests:
        items, bad = [], []
        for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            ref = f"{manifest.name}:{lineno}"
            try:
                entry = json.loads(line)
                path = str(entry["audio_filepath"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.append(Skip(ref, str(manifest), MALFORMED, f"line {lineno}: {type(e).__name__}: {e}"))
                continue
            text = entry.get("text")
            items.append(
                Item(
                    str(entry.get("id") or path),
                    text if isinstance(text, str) else "",
                    path,
                    _resolve(manifest.parent, path),
                )
            )
        out.append(SplitInput(name, items, bad))
    return out


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json"))


def read_hf(
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
    p = Path(input_ref).expanduser()
    out = []
    loaded: Any = None
    if _is_saved_dataset(p):
        loaded = datasets.load_from_disk(str(p))
    for i, hf_split in enumerate(hf_splits):
        try:
            if loaded is None:
                ds = datasets.load_dataset(
                    str(p) if p.exists() else input_ref, config_name, split=hf_split, cache_dir=cache_dir
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
        cols = ds.column_names
        audio_col = (
            audio_column
            if audio_column in cols
            else next((c for c, f in ds.features.items() if isinstance(f, datasets.Audio)), None)
        )
        if audio_col is None:
            raise PrepareError(f"--hf_audio_column {audio_column}: not a column of {input_ref} ({cols})")
        text_col = text_column or next((c for c in TEXT_COLUMNS if c in cols), "")
        if text_col not in cols:
            raise PrepareError(
                f"--hf_text_column {text_column or '(auto)'}: no transcript column in {input_ref} "
                f"(columns {cols}; auto-detection looks for {', '.join(TEXT_COLUMNS)})"
            )
        id_col = id_column or ("id" if "id" in cols else "")
        if id_col and id_col not in cols:
            raise PrepareError(f"--hf_id_column {id_col}: not a column of {input_ref} ({cols})")
        # datasets 5 decodes only through torchcodec: take the encoded bytes/path and decode with soundfile.
        ds = ds.cast_column(audio_col, datasets.Audio(decode=False))
        texts = [t if isinstance(t, str) else "" for t in ds[text_col]]
        width = max(9, len(str(len(ds))))
        ids = [str(x) for x in ds[id_col]] if id_col else [f"{k:0{width}d}" for k in range(len(ds))]
        items = [Item(ids[k], texts[k], f"{input_ref}[{hf_split}][{k}]", k) for k in range(len(ds))]
        name = splits[i] if splits else hf_split
        out.append(
            SplitInput(
                name,
                items,
                [],
                {"dataset": ds, "audio_column": audio_col, "base": str(p if p.is_dir() else Path.cwd())},
            )
        )
    return out


def detect_layout(input_ref: str) -> str:
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
    if _is_saved_dataset(p) or (p / "dataset_info.json").is_file():
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


# ----------------------------------------------------------------------------------------------- workers

_worker: dict[str, Any] = {}


def _init_worker(settings: Settings, hf: dict[str, Any] | None) -> None:
    _worker["settings"] = settings
    _worker["hf"] = hf


def _load(item: Item, max_seconds: float) -> Any:
    if isinstance(item.audio, int):
        hf = _worker["hf"]
        value = hf["dataset"][item.audio][hf["audio_column"]]
        if value is None:
            raise A.AudioError(A.MISSING, "no audio in the dataset row")
        if isinstance(value, dict) and value.get("bytes"):
            return A.decode_bytes(value["bytes"], max_seconds)
        path = value.get("path") if isinstance(value, dict) else value
        if not path:
            raise A.AudioError(A.MISSING, "neither bytes nor path in the dataset row")
        return A.load_audio(_resolve(Path(hf["base"]), str(path)), max_seconds)
    return A.load_audio(item.audio, max_seconds)


def process_item(item: Item, settings: Settings) -> dict[str, Any] | Skip:
    """One item -> a shard row, or the reason it is skipped. Never raises: a bad file must not stop a corpus."""
    try:
        if not item.text.strip():
            return Skip(item.id, item.source, EMPTY_TEXT, "no transcript")
        text = normalize(item.text)
        if not text:
            return Skip(item.id, item.source, EMPTY_TEXT, f"nothing left after normalising {item.text[:60]!r}")
        wave = _load(item, settings.max_duration_in_seconds)
        duration = wave.shape[0] / A.SAMPLE_RATE
        if settings.max_chars_per_second > 0 and len(text) > settings.max_chars_per_second * duration:
            return Skip(
                item.id,
                item.source,
                TEXT_TOO_LONG,
                f"{len(text)} characters in {duration:.2f} s (> {settings.max_chars_per_second:g}/s)",
            )
        return {"id": item.id, "audio": A.encode_flac(wave), "text": text, "duration": duration, "source": item.source}
    except A.AudioError as e:
        return Skip(item.id, item.source, e.reason, e.detail)
    except Exception as e:  # a decoder quirk nobody anticipated: report it, keep going
        return Skip(item.id, item.source, A.UNREADABLE, f"{type(e).__name__}: {e}")


def _work(tasks: list[tuple[int, Item]]) -> list[tuple[int, dict[str, Any] | Skip]]:
    return [(i, process_item(item, _worker["settings"])) for i, item in tasks]


# ----------------------------------------------------------------------------------------------- planning


def plan_shards(items: Sequence[Item], num_shards: int) -> list[list[Item]]:
    """Items sorted by id, cut into ``num_shards`` contiguous runs (fewer when there are fewer items)."""
    ordered = sorted(items, key=lambda it: it.id)
    k = max(1, min(num_shards, len(ordered)))
    n = len(ordered)
    return [ordered[i * n // k : (i + 1) * n // k] for i in range(k)]


def plan_hash(items: Sequence[Item], settings: Settings) -> str:
    h = hashlib.sha256(json.dumps(settings.key(), sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([it.id, it.source, it.text, str(it.audio)]).encode())
    return h.hexdigest()


def _dedupe(items: Sequence[Item]) -> tuple[list[Item], list[Skip]]:
    seen: set[str] = set()
    kept, dup = [], []
    for it in items:
        if it.id in seen:
            dup.append(Skip(it.id, it.source, DUPLICATE, "listed more than once; the first entry is kept"))
        else:
            seen.add(it.id)
            kept.append(it)
    return kept, dup


def _sidecar(split_dir: Path, name: str) -> Path:
    return split_dir / SIDECAR_DIR / f"{name}.json"


def _reusable(split_dir: Path, name: str, digest: str) -> dict[str, Any] | None:
    side = _sidecar(split_dir, name)
    try:
        info = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("plan") != digest:
        return None
    if not S.verify_shard(split_dir / name, int(info.get("rows", -1)), str(info.get("sha256", ""))):
        return None
    return dict(info)


def _clean_stale(split_dir: Path, keep: set[str]) -> None:
    for p in split_dir.glob("shard-*.parquet"):
        if p.name not in keep:
            p.unlink()
    for p in split_dir.glob(".shard-*.tmp"):  # left by an interrupted write
        p.unlink()
    side = split_dir / SIDECAR_DIR
    if side.is_dir():
        for p in side.glob("*.json"):
            if p.name[: -len(".json")] not in keep:
                p.unlink()


def summary_line(prepared: int, seconds: float, num_shards: int, skipped: Sequence[Skip]) -> str:
    line = f"prepared {prepared} utterances ({seconds / 3600:.1f} h) into {num_shards} shards"
    if not skipped:
        return line + "; skipped 0"
    counts = Counter(s.reason for s in skipped)
    return line + f"; skipped {len(skipped)}: " + ", ".join(f"{n} {r}" for r, n in counts.most_common())


def prepare_split(
    split: SplitInput,
    output: Path,
    num_shards: int,
    num_workers: int,
    settings: Settings,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one split's shards, manifest and report; returns the report."""
    started = time.time()
    split_dir = output / split.name
    split_dir.mkdir(parents=True, exist_ok=True)
    items, duplicates = _dedupe(split.items)
    plan = plan_shards(items, num_shards)
    names = [S.shard_name(i, len(plan)) for i in range(len(plan))]
    digests = [plan_hash(chunk, settings) for chunk in plan]
    _clean_stale(split_dir, set(names))

    done: dict[int, dict[str, Any]] = {}
    for i, name in enumerate(names):
        info = None if force else _reusable(split_dir, name, digests[i])
        if info is not None:
            done[i] = info
    todo = [i for i in range(len(plan)) if i not in done]
    reused = len(done)
    tasks = [(i, it) for i in todo for it in plan[i]]
    pending = {i: len(plan[i]) for i in todo}
    rows: dict[int, list[dict[str, Any]]] = {i: [] for i in todo}
    skips: dict[int, list[Skip]] = {i: [] for i in todo}

    def finish(i: int) -> None:
        path = split_dir / names[i]
        S.write_shard(path, rows[i])
        info = {
            "plan": digests[i],
            "rows": len(rows[i]),
            "sha256": S.sha256_file(path),
            "seconds": sum(r["duration"] for r in rows[i]),
            "skipped": [s.as_dict() for s in skips[i]],
        }
        S.write_json_atomic(_sidecar(split_dir, names[i]), info)
        done[i] = info
        del rows[i], skips[i]  # bounded memory: only unfinished shards hold audio

    for i in todo:
        if pending[i] == 0:
            finish(i)
    bar = tqdm(
        total=len(tasks),
        desc=f"prepare {split.name}",
        unit="utt",
        disable=not progress or not tasks,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )
    for i, result in _run(tasks, num_workers, settings, split.hf):
        if isinstance(result, Skip):
            skips[i].append(result)
        else:
            rows[i].append(result)
        pending[i] -= 1
        bar.update(1)
        if pending[i] == 0:
            finish(i)
    bar.close()

    skipped = split.skipped + duplicates + [Skip(**s) for i in sorted(done) for s in done[i]["skipped"]]
    skipped.sort(key=lambda s: s.id)
    prepared = sum(int(done[i]["rows"]) for i in done)
    manifest = S.write_manifest(
        split_dir,
        {names[i]: done[i]["sha256"] for i in done},
        extra={"split": split.name, **(extra or {}), "skipped": len(skipped)},
    )
    report = {
        "split": split.name,
        **(extra or {}),
        "settings": settings.key(),
        "num_items": len(split.items) + len(split.skipped),
        "prepared": prepared,
        "hours": manifest["hours"],
        "num_shards": len(plan),
        "shards_built": len(plan) - reused,
        "shards_reused": reused,
        "skipped_by_reason": dict(Counter(s.reason for s in skipped).most_common()),
        "skipped": [s.as_dict() for s in skipped],
        "summary": summary_line(prepared, manifest["total_seconds"], len(plan), skipped),
        "elapsed_seconds": round(time.time() - started, 2),
    }
    S.write_json_atomic(split_dir / S.REPORT, report)
    return report


def _run(
    tasks: list[tuple[int, Item]], num_workers: int, settings: Settings, hf: dict[str, Any] | None
) -> Iterator[tuple[int, dict[str, Any] | Skip]]:
    """Results in task order (so shards complete one after another and memory stays bounded)."""
    if not tasks:
        return
    workers = max(1, min(num_workers, len(tasks)))
    if workers == 1:
        _init_worker(settings, hf)
        for t in tasks:
            yield from _work([t])
        return
    # Chunks are made here, not by imap(chunksize=...): with a chunksize imap returns a plain generator, which
    # has no next(timeout) to notice a dead worker.
    size = max(1, min(16, len(tasks) // (workers * 8)))
    chunks = [tasks[k : k + size] for k in range(0, len(tasks), size)]
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(settings, hf)) as pool:
        results = pool.imap(_work, chunks)
        for chunk in chunks:
            try:
                yield from results.next(timeout=RESULT_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                where = ", ".join(repr(item.id) for _, item in chunk[:3])
                raise PrepareError(
                    f"no result for {RESULT_TIMEOUT_S:.0f} s from the worker decoding {where}"
                    f"{' ...' if len(chunk) > 3 else ''}; it probably died on one of them. Finished shards are "
                    "kept: re-run, or move that file away, or use --num_workers 1 to see the error"
                ) from None


# ----------------------------------------------------------------------------------------------- CLI


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours SLURM/cgroup CPU limits, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xlsr_dist.prepare",
        description="Convert a speech corpus into xlsr_dist Parquet shards (16 kHz mono FLAC + normalised text).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="corpus layout (auto guesses from --input)")
    p.add_argument("--input", required=True, help="corpus directory, transcript table, manifest, or dataset name")
    p.add_argument("--output", required=True, help="output root; each split goes to OUTPUT/<split>/")
    p.add_argument(
        "--split",
        nargs="+",
        default=None,
        help="splits to write (commonvoice: tsv names; librispeech: sub-directories; folder/nemo: "
        "table/manifest names in --input, or the name of the one split; hf: output names)",
    )
    p.add_argument("--num_shards", type=int, default=8, help="shards per split")
    p.add_argument("--num_workers", type=int, default=default_workers(), help="decoding processes")
    p.add_argument("--max_duration_in_seconds", type=float, default=30.0, help="longer audio is skipped")
    p.add_argument(
        "--max_chars_per_second",
        type=float,
        default=25.0,
        help="transcripts denser than this are skipped as unalignable (0 disables)",
    )
    p.add_argument("--hf_split", nargs="+", default=["train"], help="dataset splits to read (hf layout)")
    p.add_argument("--hf_config", default=None, help="dataset configuration name (hf layout)")
    p.add_argument("--hf_audio_column", default="audio", help="audio column (hf layout)")
    p.add_argument("--hf_text_column", default="", help="transcript column (hf layout; default: auto-detect)")
    p.add_argument("--hf_id_column", default="", help="id column (hf layout; default: id, else the row number)")
    p.add_argument("--hf_cache_dir", default=None, help="datasets cache directory (hf layout)")
    p.add_argument("--force", action="store_true", help="rebuild every shard even if a finished one matches")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _check_args(a: argparse.Namespace) -> None:
    problems = []
    if a.num_shards < 1:
        problems.append("--num_shards: must be >= 1")
    if a.num_workers < 1:
        problems.append("--num_workers: must be >= 1")
    if a.max_duration_in_seconds <= 0:
        problems.append("--max_duration_in_seconds: must be > 0")
    if a.max_chars_per_second < 0:
        problems.append("--max_chars_per_second: must be >= 0")
    for s in a.split or []:
        if not s or "/" in s or s in (".", ".."):
            problems.append(f"--split {s!r}: must be a plain directory name")
    if problems:
        raise PrepareError("; ".join(problems))


def read_layout(a: argparse.Namespace) -> tuple[str, list[SplitInput]]:
    layout = detect_layout(a.input) if a.layout == "auto" else a.layout
    if layout == "hf":
        return layout, read_hf(
            a.input,
            a.split,
            a.hf_split,
            a.hf_audio_column,
            a.hf_text_column,
            a.hf_id_column,
            a.hf_config,
            a.hf_cache_dir,
        )
    p = Path(a.input).expanduser()
    readers = {
        "folder": read_folder,
        "commonvoice": read_commonvoice,
        "librispeech": read_librispeech,
        "nemo": read_nemo,
    }
    return layout, readers[layout](p, a.split)


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, prepare every split, print one summary line each; returns the reports."""
    a = build_parser().parse_args(argv)
    _check_args(a)
    layout, splits = read_layout(a)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise PrepareError(f"split names repeat: {names}")
    settings = Settings(a.max_duration_in_seconds, a.max_chars_per_second)
    output = Path(a.output).expanduser()
    reports = []
    for split in splits:
        if not split.items and not split.skipped:
            raise PrepareError(f"split {split.name}: no utterances found in {a.input}")
        report = prepare_split(
            split,
            output,
            a.num_shards,
            a.num_workers,
            settings,
            extra={"layout": layout, "input": a.input},
            force=a.force,
            progress=not a.no_progress,
        )
        print(f"{split.name}: {report['summary']} -> {output / split.name}", flush=True)
        reports.append(report)
    return reports


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run(argv)
    except PrepareError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
