"""`python -m xlsr_dist.lm build --output DIR [--train_data SHARDS ...] [--text FILE ...] [--order N] [--prune ...]`:
an n-gram word LM in KenLM's format for LM beam search (evaluate/export/transcribe --lm DIR).

Transcripts come from Parquet shards (column ``text``, normalised by prepare) and/or plain text files (one sentence
a line), which are normalised as the shards' split records (its manifest), else as ``--language`` says. The LM
directory is written whole or not at all (decoding/lm_build.py describes it). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from xlsr_dist import text
from xlsr_dist.config import ConfigError
from xlsr_dist.data import language, shards
from xlsr_dist.decoding import lm_build
from xlsr_dist.training import preflight

PROG = "xlsr_dist.lm"


def _argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Build an n-gram LM for CTC beam search.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="estimate an n-gram LM (KenLM's lmplz) from transcripts")
    b.add_argument("--output", required=True, help="the LM directory to write (must not exist)")
    b.add_argument("--train_data", nargs="+", default=[], metavar="SHARDS", help="split(s) whose `text` to use")
    b.add_argument("--text", nargs="+", default=[], metavar="FILE", help="text file(s), one sentence a line")
    b.add_argument("--order", type=int, default=3, help="n-gram order, 2-6 (default 3)")
    b.add_argument("--prune", type=int, nargs="+", default=[], help="lmplz --prune thresholds per order, e.g. 0 0 1")
    b.add_argument(
        "--language", default="", help="how --text files are normalised (default: the --train_data split's, else en)"
    )
    b.add_argument("--memory", default="20%", help="lmplz's sort memory, -S (default 20%%)")
    return p


def _normalization(train_data: Sequence[str], lang: str) -> tuple[text.TextNormalization, list[str]]:
    problems: list[str] = []
    recorded = None
    for location in train_data:
        try:
            found = language.split_normalization(location)
        except ValueError as exc:
            problems.append(f"--train_data {location}: {exc}")
            continue
        if found is not None and recorded is not None and not found.same_effect(recorded):
            problems.append(f"--train_data {location}: normalised otherwise than {train_data[0]}; build from one kind")
        recorded = recorded or found
    if lang:
        try:
            wanted = text.TextNormalization(language=lang)
        except ValueError as exc:
            return text.ENGLISH, [*problems, f"--language: {exc}"]
        if recorded is not None and wanted.language != recorded.language:
            problems.append(f"--language {lang}: the --train_data split was prepared for {recorded.language!r}")
        return recorded or wanted, problems
    return recorded or text.ENGLISH, problems


def _lines(paths_by_split: list[list[str]], files: Sequence[str], norm: text.TextNormalization) -> Iterator[str]:
    for paths in paths_by_split:
        for path in paths:
            yield from (t or "" for t in shards.read_metadata([path]).column("text").to_pylist())
    for f in files:
        with open(f, encoding="utf-8") as handle:
            for line in handle:
                yield text.normalize(line, norm)


def check(args: argparse.Namespace) -> tuple[lm_build.BuildOptions, list[list[str]], text.TextNormalization]:
    """Everything wrong with the flags, at once, before anything is written; raises ConfigError."""
    options = lm_build.BuildOptions(order=args.order, prune=tuple(args.prune), memory=args.memory)
    problems = lm_build.option_problems(options)
    if not args.train_data and not args.text:
        problems.append("give --train_data SHARDS and/or --text FILE: the LM's corpus")
    if Path(args.output).exists():
        problems.append(f"--output {args.output}: already exists; choose a new directory")
    paths_by_split = []
    for location in args.train_data:
        try:
            paths_by_split.append(preflight.shard_paths("--train_data", location))
        except ConfigError as exc:
            problems += exc.problems
    for f in args.text:
        try:
            with open(f, encoding="utf-8") as handle:
                for _ in handle:
                    pass
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"--text {f}: cannot be read as UTF-8 text ({type(exc).__name__}: {exc})")
    norm, more = _normalization(args.train_data, args.language)
    problems += more
    try:
        lm_build.kenlm_bin_dir()
    except lm_build.LMError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return options, paths_by_split, norm


def main(argv: Sequence[str] | None = None) -> None:
    args = _argparser().parse_args(argv)
    try:
        options, paths_by_split, norm = check(args)
        info = {"sources": [*args.train_data, *args.text], "normalization": norm.to_dict()}
        record = lm_build.build(_lines(paths_by_split, args.text, norm), Path(args.output), options, info)
    except (ConfigError, lm_build.LMError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{args.output}: {record['order']}-gram LM, {record['words']} words from {record['sentences']} sentences "
        f"({', '.join(record['sources'])})"
    )


if __name__ == "__main__":
    main()
