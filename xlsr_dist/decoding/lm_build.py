"""An n-gram word LM in KenLM's format, estimated by KenLM's lmplz from normalised transcripts.

The LM directory is pyctcdecode's ``language_model/`` layout, so it can be copied into an exported model unchanged
and read by ``BeamSearchDecoderCTC.load_from_dir``: ``attrs.json`` (alpha, beta, unk_score_offset, score_boundary),
``lm.bin`` (KenLM binary, from lmplz's ARPA through build_binary: it loads in a fraction of the ARPA's time) and
``unigrams.txt`` (the corpus's words, which pyctcdecode uses to score partial words). What pyctcdecode has no room
for (order, pruning, the characters and normalisation of the corpus, tuning) is in the hidden ``.xlsr_lm.json``:
pyctcdecode's loader ignores names starting with a dot and refuses any fourth visible file.

lmplz is built from the PyPI kenlm sdist by tools/build_kenlm.sh (``make setup``) into
``~/.cache/xlsr_dist/kenlm-<version>/bin``; ``$XLSR_KENLM_BIN`` names another directory holding lmplz and
build_binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr_dist import atomic
from xlsr_dist.text import PAD, UNK, WORD_DELIMITER

KENLM_VERSION = "0.3.0"
KENLM_FILE = "lm.bin"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"
INFO_FILE = ".xlsr_lm.json"
FORMAT_VERSION = 1
# pyctcdecode 0.5.0's own defaults (constants.py), used until --tune_lm stores tuned values.
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.5
UNK_SCORE_OFFSET = -10.0
MAX_ORDER = 6  # tools/build_kenlm.sh builds with KENLM_MAX_ORDER=6


class LMError(ValueError):
    """A problem with an LM directory, the corpus or the estimator, one line naming what to change."""


def kenlm_bin_dir() -> Path:
    """Where lmplz and build_binary are; raises LMError saying how to build them when they are not there."""
    env = os.environ.get("XLSR_KENLM_BIN", "")
    where = Path(env) if env else Path.home() / ".cache" / "xlsr_dist" / f"kenlm-{KENLM_VERSION}" / "bin"
    for tool in ("lmplz", "build_binary"):
        if not os.access(where / tool, os.X_OK):
            raise LMError(
                f"KenLM's {tool} is not in {where}: run `make setup` (tools/build_kenlm.sh builds it) or set "
                "XLSR_KENLM_BIN to a directory holding lmplz and build_binary"
            )
    return where


@dataclass(frozen=True)
class BuildOptions:
    order: int = 3
    prune: tuple[int, ...] = ()
    """lmplz --prune thresholds, one per order from the lowest (lmplz: unigrams must be 0)."""
    memory: str = "20%"
    """lmplz -S: its sort buffers' size."""


def option_problems(options: BuildOptions) -> list[str]:
    problems = []
    if not 2 <= options.order <= MAX_ORDER:
        problems.append(f"--order must be 2 to {MAX_ORDER} (got {options.order})")
    if len(options.prune) > options.order:
        problems.append(
            f"--prune: {len(options.prune)} thresholds for order {options.order}; give at most one per order"
        )
    if options.prune and options.prune[0] != 0:
        problems.append("--prune: the first threshold (unigrams) must be 0, as lmplz requires")
    if any(b < a for a, b in zip(options.prune, options.prune[1:])):
        problems.append(f"--prune {' '.join(map(str, options.prune))}: thresholds must not decrease with the order")
    if any(t < 0 for t in options.prune):
        problems.append("--prune: thresholds are counts, 0 or more")
    return problems


def _run(argv: Sequence[str], what: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[:600]
        raise LMError(f"{what} failed (exit {done.returncode}): {tail}")


def write_corpus(lines: Iterable[str], path: Path) -> tuple[int, set[str], set[str]]:
    """One normalised sentence a line; returns (sentences, words, characters). Empty lines are left out."""
    sentences, words, chars = 0, set(), set()
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            tokens = line.split()
            if not tokens:
                continue
            f.write(" ".join(tokens) + "\n")
            sentences += 1
            words.update(tokens)
            for t in tokens:
                chars.update(t)
    return sentences, words, chars


def build(lines: Iterable[str], output: Path, options: BuildOptions, info: dict[str, Any]) -> dict[str, Any]:
    """Estimate the LM from ``lines`` (normalised transcripts) into the directory ``output``, atomically: it is
    complete or absent. ``info`` (sources, normalisation) is recorded in INFO_FILE; returns the whole record."""
    tools = kenlm_bin_dir()
    with atomic.replacing_dir(output) as tmp, tempfile.TemporaryDirectory(prefix="xlsr_lm_") as work:
        corpus = Path(work) / "corpus.txt"
        sentences, words, chars = write_corpus(lines, corpus)
        if not words:
            raise LMError("the corpus holds no words: nothing to estimate an LM from")
        arpa = Path(work) / "lm.arpa"
        # --discount_fallback: Kneser-Ney discounts cannot be estimated from a tiny corpus's count-of-counts.
        argv = [str(tools / "lmplz"), "-o", str(options.order), "-S", options.memory, "-T", work]
        argv += ["--discount_fallback", "--text", str(corpus), "--arpa", str(arpa)]
        if options.prune:
            argv += ["--prune", *map(str, options.prune)]
        _run(argv, "lmplz")
        _run([str(tools / "build_binary"), "-S", options.memory, str(arpa), str(tmp / KENLM_FILE)], "build_binary")
        (tmp / UNIGRAMS_FILE).write_text("".join(w + "\n" for w in sorted(words)), encoding="utf-8")
        write_attrs(tmp, DEFAULT_ALPHA, DEFAULT_BETA)
        record = {
            "format": FORMAT_VERSION,
            "kenlm": KENLM_VERSION,
            "order": options.order,
            "prune": list(options.prune),
            "sentences": sentences,
            "words": len(words),
            "alphabet": "".join(sorted(chars)),
            "tuned": None,
            **info,
        }
        atomic.write_json(tmp / INFO_FILE, record)
    return record


def write_attrs(lm_dir: Path, alpha: float, beta: float) -> None:
    attrs = {"alpha": alpha, "beta": beta, "unk_score_offset": UNK_SCORE_OFFSET, "score_boundary": True}
    atomic.write_text(lm_dir / ATTRS_FILE, json.dumps(attrs))


@dataclass(frozen=True)
class LMDir:
    """A checked LM directory: its attrs and record."""

    path: Path
    alpha: float
    beta: float
    info: dict[str, Any]


def read_lm_dir(path: str | Path, flag: str = "--lm") -> LMDir:
    """The LM at ``path``; raises LMError naming ``flag`` when it is missing or not an LM ``lm build`` wrote."""
    p = Path(path)
    if not p.is_dir():
        raise LMError(f"{flag} {path}: no such directory")
    missing = [n for n in (ATTRS_FILE, KENLM_FILE, UNIGRAMS_FILE, INFO_FILE) if not (p / n).is_file()]
    if missing:
        raise LMError(
            f"{flag} {path}: not an LM written by `python -m xlsr_dist.lm build` ({', '.join(missing)} missing)"
        )
    try:
        attrs = json.loads((p / ATTRS_FILE).read_text())
        info = json.loads((p / INFO_FILE).read_text(encoding="utf-8"))
        alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LMError(f"{flag} {path}: unreadable {ATTRS_FILE} or {INFO_FILE} ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_VERSION:
        raise LMError(f"{flag} {path}: {INFO_FILE} is not format {FORMAT_VERSION}; build the LM again")
    return LMDir(p, alpha, beta, info)


def alphabet_problem(lm: LMDir, vocab: dict[str, int], flag: str = "--lm") -> str | None:
    """Why the LM cannot decode this model's outputs (a character of its words the vocabulary lacks), or None."""
    model_chars = {t for t in vocab if t not in (WORD_DELIMITER, UNK, PAD)}
    extra = sorted(set(str(lm.info.get("alphabet", ""))) - model_chars)
    if not extra:
        return None
    shown = "".join(extra[:20]) + ("..." if len(extra) > 20 else "")
    return (
        f"{flag} {lm.path}: its words use {len(extra)} character(s) the model's vocabulary lacks ({shown!r}): it was "
        "built from text normalised another way, or for another model; build it from the model's training split"
    )
