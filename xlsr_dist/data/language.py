"""The language and transcript normalisation a prepared split records, and the check that a run reads it alike.

prepare writes ``TextNormalization.to_dict()`` (language, fold_accents, mode, chars_to_ignore) under
``"text_normalization"`` in each split's manifest.json. A split prepared before xlsr_dist spoke other languages has
no such record: its transcripts were normalised the English way (``text.ENGLISH``), and so it is read. Shards without
a manifest (written by another tool) record nothing; the run's flags say how they are read.

Training and evaluation normalise the transcripts again (idempotently) and score them with the run's settings, so
those must be the split's: a German corpus trained as ``--language ru`` would be spelled, lower-cased and scored as
Russian. ``training_problems`` finds every such mismatch before any process group starts (train.main).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xlsr_dist.config import Config
from xlsr_dist.data import shards
from xlsr_dist.text import ENGLISH, TextNormalization

MANIFEST_KEY = "text_normalization"


def recorded(manifest: Mapping[str, Any]) -> TextNormalization:
    """The normalisation a manifest records; English for a manifest of an older prepare, which records none.
    Raises ValueError for a record that is not valid settings."""
    entry = manifest.get(MANIFEST_KEY)
    if entry is None:
        return ENGLISH
    if not isinstance(entry, Mapping):
        raise ValueError(f"{shards.MANIFEST}: {MANIFEST_KEY} is {entry!r}, not a mapping of settings")
    return TextNormalization.from_dict(dict(entry))


def split_manifest(location: str) -> dict[str, Any] | None:
    """The manifest of the split at ``location`` (a split directory or URL, or one shard file in it); None when it
    has none. Raises ValueError when it cannot be read."""
    split_dir = str(location).rstrip("/")
    if split_dir.endswith(".parquet"):
        split_dir = split_dir.rsplit("/", 1)[0] if "/" in split_dir else "."
    try:
        return shards.read_manifest(split_dir)
    except shards.ShardError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return None
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"cannot read {split_dir}/{shards.MANIFEST}: {e}") from None


def split_normalization(location: str) -> TextNormalization | None:
    """What the split at ``location`` records (English for an older prepare's); None when it has no manifest.
    Raises ValueError when its manifest cannot be read or records invalid settings."""
    manifest = split_manifest(location)
    return None if manifest is None else recorded(manifest)


def read_as(location: str, default: TextNormalization) -> TextNormalization:
    """How a split of a mixed run (several --train_data sets) is read: the settings its manifest records (English for
    an older prepare's, as training_problems judges it), else (no manifest, or one that cannot be read: a problem
    training_problems reports) ``default``, the run's flags. One training set (and its eval sets) is read with the
    run's flags, which training_problems holds to the manifests."""
    try:
        manifest = split_manifest(location)
        return default if manifest is None else recorded(manifest)
    except ValueError:
        return default


def _fold_flag(normalization: TextNormalization) -> str:
    return "true" if normalization.folds_accents else "false"


def mismatch_problems(
    wanted: TextNormalization, found: TextNormalization, what: str, legacy: bool = False
) -> list[str]:
    """One line per setting of the run (``wanted``) that differs from the split's (``found``), naming both; ``what``
    names the split ("the training data at DIR"). ``legacy``: the split records nothing (an older prepare)."""
    if wanted.same_effect(found):
        return []
    source = (
        f"{shards.MANIFEST} records no language: prepared by an older xlsr_dist, which normalised English only"
        if legacy
        else shards.MANIFEST
    )
    if wanted.language != found.language:
        return [
            f"--language {wanted.language}: {what} was prepared for {found.language!r} ({source}); train with "
            f"--language {found.language}, or prepare the corpus again with --language {wanted.language}"
        ]
    problems = []
    differing = []
    if wanted.mode != found.mode:
        differing.append(("text_normalization", wanted.mode, found.mode))
    elif wanted.mode != "none" and wanted.folds_accents != found.folds_accents:
        differing.append(("fold_accents", _fold_flag(wanted), _fold_flag(found)))
    if not TextNormalization(chars_to_ignore=wanted.chars_to_ignore).same_effect(
        TextNormalization(chars_to_ignore=found.chars_to_ignore)
    ):
        differing.append(("chars_to_ignore", repr(wanted.chars_to_ignore), repr(found.chars_to_ignore)))
    for flag, mine, theirs in differing:
        problems.append(
            f"--{flag} {mine}: {what} was prepared with --{flag} {theirs} ({source}); train with the settings it "
            f"was prepared with, or prepare it again with yours"
        )
    return problems


def training_problems(cfg: Config) -> list[str]:
    """Every mismatch between the run's normalisation flags and what its training and eval splits record; a
    manifest that cannot be read is a problem too (naming --train_data/--eval_data). Several training sets may be
    of several languages, each set (eval sets too) read with its own recorded settings; two sets of one language
    recorded with different settings are then the problem (one language, two spellings of it)."""
    wanted = cfg.data.normalization()
    problems: list[str] = []
    if cfg.data.train_data == "demo" and not wanted.same_effect(ENGLISH):
        problems.append(
            f"--language {wanted.language}: --train_data demo is the English demo corpus; train it with --language en "
            f"(the default), or give --train_data a corpus prepared with --language {wanted.language}"
            if wanted.language != ENGLISH.language
            else "--train_data demo: the demo corpus is normalised the English way; leave --fold_accents, "
            "--text_normalization and --chars_to_ignore unset for it"
        )
    checked = [("train_data", location, "the training data") for location, _ in cfg.data.train_sets()]
    eval_sets = cfg.data.eval_sets()
    for name, location in eval_sets:
        checked.append(("eval_data", location, "the eval data" if len(eval_sets) == 1 else f"the eval set {name}"))
    multilingual = len(checked) - len(eval_sets) > 1
    by_language: dict[str, tuple[TextNormalization, str]] = {}
    for flag, location, role in checked:
        if not location or (flag == "train_data" and location == "demo"):
            continue
        try:
            manifest = split_manifest(location)
            if manifest is None:
                continue  # shards of another tool: read with the run's settings
            found = recorded(manifest)
        except ValueError as e:
            problems.append(f"--{flag} {location}: {e}")
            continue
        if not multilingual:
            problems += mismatch_problems(wanted, found, f"{role} at {location}", legacy=MANIFEST_KEY not in manifest)
            continue
        first = by_language.setdefault(found.language, (found, f"--{flag} {location}"))
        if not first[0].same_effect(found):
            problems.append(
                f"--{flag} {location}: {found.language!r} with other text settings ({found.to_dict()}) than "
                f"{first[1]} ({first[0].to_dict()}), both {shards.MANIFEST}; one language must be spelled one way "
                "in one vocabulary: prepare the sets of a language with the same --fold_accents, --text_normalization "
                "and --chars_to_ignore"
            )
    return problems
