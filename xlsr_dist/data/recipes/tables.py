"""Files the table-based recipes share: transcript tables (.tsv/.csv), one table or manifest per split, and audio
paths relative to the file that names them."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from xlsr_dist.data.recipes.items import PrepareError, Skip
from xlsr_dist.data.skip_reasons import MALFORMED_ENTRY

# Header names recognised case-insensitively, the first present wins.
PATH_COLUMNS = ("path", "file", "file_name", "filename", "audio", "audio_path", "audio_filepath", "filepath", "wav")
TEXT_COLUMNS = ("text", "sentence", "transcript", "transcription", "normalized_text", "label")


def read_transcript_table(path: Path, bad: list[Skip]) -> Iterator[tuple[str, str]]:
    """(audio path, transcript) of each row of a .tsv/.csv transcript table, read as they are taken; its malformed
    lines are appended to ``bad`` as skips. PrepareError (when taken first) for a table without the columns."""
    # newline="": only \n, \r, \r\n end a row (str.splitlines would also split on U+2028 inside a sentence).
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as text:
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
        path_column = next((c for c in PATH_COLUMNS if c in lower), None)
        text_column = next((c for c in TEXT_COLUMNS if c in lower), None)
        if path_column is None or text_column is None:
            missing = "audio path" if path_column is None else "transcript"
            wanted = PATH_COLUMNS if path_column is None else TEXT_COLUMNS
            raise PrepareError(
                f"{path}: cannot tell which column holds the {missing} (looked for {', '.join(wanted)}); the header "
                f"is {header}; rename that column"
            )
        path_at, text_at = lower.index(path_column), lower.index(text_column)
        for lineno, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) <= max(path_at, text_at) or not fields[path_at].strip():
                bad.append(
                    Skip(
                        f"{path.name}:{lineno}",
                        str(path),
                        MALFORMED_ENTRY,
                        f"line {lineno} has {len(fields)} fields or no audio path",
                    )
                )
                continue
            yield fields[path_at].strip(), fields[text_at]


def resolve_path(base: Path, path: str) -> str:
    """``path`` as written in a table or manifest, relative to ``base`` unless absolute."""
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else base / expanded)


def find_per_split(
    directory: Path, suffixes: tuple[str, ...], splits: Sequence[str] | None, what: str
) -> list[tuple[str, Path]]:
    """(split, file) pairs: ``<split><suffix>`` for each named split, else the directory's one such file as train."""
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


def single_split_name(splits: Sequence[str] | None, layout: str) -> str:
    """The split name for a single --input file: the one --split given, else train."""
    if splits and len(splits) > 1:
        raise PrepareError(f"--layout {layout} with a single --input file writes one split; got --split {splits}")
    return splits[0] if splits else "train"
