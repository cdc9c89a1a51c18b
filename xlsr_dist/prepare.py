"""``python -m xlsr_dist.prepare`` (``xlsr-prepare``): a speech corpus -> Parquet shards + manifest + report.

``--layout`` (default ``auto``, guessed from ``--input``) picks the recipe that reads the corpus: ``folder``,
``commonvoice``, ``librispeech``, ``nemo`` or ``hf`` (see ``xlsr_dist.data.recipes``). Each split is written to
``<output>/<split>/``: ``shard-NNNNN-of-NNNNN.parquet`` (16 kHz mono FLAC, see ``xlsr_dist.data.shards``),
``manifest.json`` (counts, hours, duration histogram, character set, shard checksums, the text normalisation) and
``report.json`` (every skipped item with its id and reason; ``xlsr_dist.data.convert`` lists the reasons); one
summary line per split is printed. Shards are cut at ``--shard_size_mb`` (256 MiB) as they are written, so their
number follows the corpus and memory does not; ``--num_shards`` fixes the number instead. A re-run keeps the shards
it finished for the same plan (``xlsr_dist.data.shard_plan``). ``--output`` may be an fsspec URL (s3://bucket/corpus,
with the standard AWS variables for s3fs): each split is then prepared in a temporary local directory and copied
there, manifest last (``xlsr_dist.data.shards.publish``); a re-run to a URL rebuilds every shard.

Transcripts are normalised for ``--language`` (ISO 639, default en; see ``xlsr_dist.text``): ``--fold_accents``,
``--text_normalization none`` and HF's ``--chars_to_ignore`` adjust it. The settings are recorded in the manifest,
and training checks its ``--language`` (and the rest) against them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from xlsr_dist.data.convert import Settings
from xlsr_dist.data.prepare import DEFAULT_SHARD_SIZE_MB, prepare_split
from xlsr_dist.data.recipes import AUDIO_ONLY, FILE_RECIPES, LAYOUTS, detect_layout, hf
from xlsr_dist.data.recipes.item_store import SplitInput
from xlsr_dist.data.recipes.items import PrepareError
from xlsr_dist.data.shards import REPORT, filesystem, is_local, publish_split
from xlsr_dist.text import MODES, TextNormalization, settings_problems


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours SLURM/cgroup CPU limits, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's own errors (a required flag missing, a value of the wrong type) as one line, like every other
    error of prepare, instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise PrepareError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog="python -m xlsr_dist.prepare",
        description="Convert a speech corpus into xlsr_dist Parquet shards (16 kHz mono FLAC + normalised text).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="corpus layout (auto guesses from --input)")
    p.add_argument("--input", required=True, help="corpus directory, transcript table, manifest, or dataset name")
    p.add_argument(
        "--output",
        required=True,
        help="output root, a directory or fsspec URL (s3://bucket/corpus); each split goes to OUTPUT/<split>/",
    )
    p.add_argument(
        "--split",
        nargs="+",
        default=None,
        help="splits to write (commonvoice: tsv names; librispeech: sub-directories; folder/nemo: "
        "table/manifest names in --input, or the name of the one split; hf: output names)",
    )
    p.add_argument(
        "--shard_size_mb",
        type=float,
        default=None,
        help=f"target shard size in MiB (default {DEFAULT_SHARD_SIZE_MB:g}): a shard is closed and the next begun "
        "when its file reaches it, so the number of shards follows the corpus and memory stays bounded whatever "
        "its size%(default).0s",  # the empty %(default) keeps argparse from printing "(default: None)"
    )
    p.add_argument(
        "--num_shards",
        type=int,
        default=None,
        help="a fixed number of shards per split instead of --shard_size_mb%(default).0s",
    )
    p.add_argument("--num_workers", type=int, default=default_workers(), help="decoding processes")
    p.add_argument("--max_duration_in_seconds", type=float, default=30.0, help="longer audio is skipped")
    p.add_argument(
        "--max_chars_per_second",
        type=float,
        default=25.0,
        help="transcripts denser than this are skipped as unalignable (0 disables)",
    )
    p.add_argument("--language", default="en", help="ISO 639 code of the transcripts' language (en, de, tr, zh, ...)")
    p.add_argument(
        "--fold_accents",
        type=_parse_fold,
        nargs="?",
        const=True,
        default=None,
        metavar="true|false",
        help="fold accents away (café -> cafe); default: on for English only",
    )
    p.add_argument(
        "--text_normalization",
        default="default",
        choices=MODES,
        help="'none' for transcripts normalised already (only --chars_to_ignore and whitespace are applied)",
    )
    p.add_argument(
        "--chars_to_ignore",
        default="",
        help="characters deleted from every transcript, as one string (HF's --chars_to_ignore: ',?.!-;:\"')",
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


def _parse_fold(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    if lowered == "none":
        return None
    raise argparse.ArgumentTypeError(f"expected true, false or none, got {value!r}")


def _check_args(args: argparse.Namespace) -> None:
    problems = settings_problems(args.language, args.text_normalization)
    if args.num_shards is not None and args.num_shards < 1:
        problems.append("--num_shards: must be >= 1")
    if args.shard_size_mb is not None and not args.shard_size_mb > 0:
        problems.append("--shard_size_mb: must be > 0")
    if args.num_shards is not None and args.shard_size_mb is not None:
        problems.append("--num_shards and --shard_size_mb: give one of them (a count, or a size to cut shards at)")
    if args.num_workers < 1:
        problems.append("--num_workers: must be >= 1")
    if args.max_duration_in_seconds <= 0:
        problems.append("--max_duration_in_seconds: must be > 0")
    if args.max_chars_per_second < 0:
        problems.append("--max_chars_per_second: must be >= 0")
    for s in args.split or []:
        if not s or "/" in s or s in (".", ".."):
            problems.append(f"--split {s!r}: must be a plain directory name")
    if problems:
        raise PrepareError("; ".join(problems))


def read_layout(args: argparse.Namespace) -> tuple[str, list[SplitInput]]:
    """The layout (guessed when ``--layout auto``) and the splits its recipe reads from ``--input``."""
    layout = detect_layout(args.input) if args.layout == "auto" else args.layout
    if layout == "hf":
        return layout, hf.read_splits(
            args.input,
            args.split,
            args.hf_split,
            args.hf_audio_column,
            args.hf_text_column,
            args.hf_id_column,
            args.hf_config,
            args.hf_cache_dir,
        )
    return layout, FILE_RECIPES[layout](Path(args.input).expanduser(), args.split)


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, prepare every split, print one summary line each; returns the reports."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    layout, splits = read_layout(args)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise PrepareError(f"split names repeat: {names}")
    for split in splits:
        if not split.items:
            rejected = Counter(s.reason for s in split.skipped)
            why = f" (every entry rejected: {', '.join(f'{n} {r}' for r, n in rejected.items())})" if rejected else ""
            raise PrepareError(f"--input {args.input}: split {split.name}: no usable utterances found{why}")
    normalization = TextNormalization(args.language, args.fold_accents, args.text_normalization, args.chars_to_ignore)
    unlabelled = layout == AUDIO_ONLY
    settings = Settings(args.max_duration_in_seconds, args.max_chars_per_second, normalization, unlabelled)
    remote = not is_local(args.output)
    if remote:
        _check_remote_output(args.output)
        # Each split is prepared here, then copied to the store (publish_split): local disk holds one split at a time.
        output = Path(tempfile.mkdtemp(prefix="xlsr_prepare."))
    else:
        output = Path(args.output).expanduser()
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrepareError(f"--output {args.output}: cannot create the directory ({exc.strerror or exc})") from None
        if not os.access(output, os.W_OK):
            raise PrepareError(f"--output {args.output}: not writable")
    reports = []
    try:
        for split in splits:
            report = prepare_split(
                split,
                output,
                args.num_shards,
                args.num_workers,
                settings,
                extra={"layout": layout, "input": args.input, **({"unlabelled": True} if unlabelled else {})},
                force=args.force,
                progress=not args.no_progress,
                shard_size_mb=args.shard_size_mb or DEFAULT_SHARD_SIZE_MB,
            )
            if remote:
                _publish(output / split.name, _split_location(args.output, split.name))
            print(f"{split.name}: {report['summary']} -> {_split_location(args.output, split.name)}", flush=True)
            reports.append(report)
    finally:
        if remote:
            shutil.rmtree(output, ignore_errors=True)
    unusable = [r for r in reports if not r["prepared"]]
    if unusable:
        reasons = "; ".join(
            f"split {r['split']}: none of its {r['num_items']} entries ("
            + ", ".join(f"{n} {reason}" for reason, n in r["skipped_by_reason"].items())
            + f"), see {_split_location(args.output, r['split'])}/{REPORT}"
            for r in unusable
        )
        raise PrepareError(f"--input {args.input}: no usable utterances: {reasons}")
    return reports


def _split_location(output: str, split: str) -> str:
    if is_local(output):
        return str(Path(output).expanduser() / split)
    return f"{output.rstrip('/')}/{split}"


def _check_remote_output(url: str) -> None:
    """Fail before hours of conversion when the store cannot be reached or written (no bucket, no credentials)."""
    try:
        fs, path = filesystem(url)
        fs.makedirs(path, exist_ok=True)
        probe = f"{path.rstrip('/')}/.xlsr_prepare_probe"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - fsspec, botocore and HTTP errors alike: the store cannot be used
        raise PrepareError(f"--output {url}: cannot write there ({_one_line(exc)})") from None


def _publish(split_dir: Path, url: str) -> None:
    try:
        publish_split(split_dir, url)
    except Exception as exc:  # noqa: BLE001 - as above; the shards are lost with the staging directory
        raise PrepareError(f"--output {url}: copying the prepared split failed ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:400]


def main(argv: Sequence[str] | None = None) -> None:
    try:
        run(argv)
    except PrepareError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
