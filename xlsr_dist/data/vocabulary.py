"""A training split's vocabulary: from its manifest's character set, or, for shards that have no usable manifest,
from every transcript.

prepare records in manifest.json the characters of the transcripts it wrote (``vocabulary``) and the normalisation
it wrote them with (``text_normalization``). Those transcripts are fixed points of ``text.normalize`` under that
normalisation (it is idempotent), so ``text.build_vocab`` over the character set is the vocabulary reading and
normalising every transcript gives, ids and order included -- without each rank reading and normalising a whole
corpus at start-up. The manifest is trusted only when it names exactly the shards found (names and sizes) and records
the run's normalisation; otherwise (an older prepare, shards of another tool, a manifest of other shards) the
transcripts are read as before.
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec

from xlsr_dist import text
from xlsr_dist.config.tree import parse_train_sets
from xlsr_dist.data import language, shards

log = logging.getLogger(__name__)


def split_vocabulary(location: str, normalization: text.TextNormalization) -> dict[str, int]:
    """The vocabulary of the training split at ``location`` as the run normalises it; for several mixed sets
    (--train_data 'dirA=0.7,dirB=0.3') the union of theirs, each set normalised as its manifest records
    (language.read_as)."""
    texts: list[str] = []
    sets = parse_train_sets(location)
    for set_location, _ in sets:
        own = language.read_as(set_location, normalization) if len(sets) > 1 else normalization
        texts += _split_texts(set_location, own)
    return text.build_vocab(texts)


def _split_texts(location: str, normalization: text.TextNormalization) -> list[str]:
    """The manifest's character set, else every normalised transcript of the split."""
    paths = shards.list_shards(location)
    recorded = manifest_characters(location, paths, normalization)
    if recorded is not None:
        return [recorded]
    log.info("vocabulary: %s has no manifest character set for these shards; reading every transcript", location)
    meta = shards.read_metadata(paths)
    return [text.normalize(t, normalization) for t in meta.column("text").to_pylist()]


def manifest_characters(location: str, paths: list[str], normalization: text.TextNormalization) -> str | None:
    """The manifest's character set when it describes ``paths`` (the listed shards) as prepared with
    ``normalization``; None when there is none to trust."""
    try:
        manifest = language.split_manifest(location)
    except ValueError:
        return None
    if manifest is None or not isinstance(manifest.get("vocabulary"), str):
        return None
    # A manifest without the record comes from a prepare that predates it, or from another writer of shards
    # (write_manifest over transcripts nobody normalised): only a prepare's record vouches for the transcripts.
    if language.MANIFEST_KEY not in manifest:
        return None
    try:
        if not language.recorded(manifest).same_effect(normalization):
            return None
    except ValueError:
        return None
    if not _describes(manifest, paths):
        return None
    return str(manifest["vocabulary"])


def _describes(manifest: dict[str, Any], paths: list[str]) -> bool:
    """True when the manifest lists exactly these shard files, each with its size."""
    listed = manifest.get("shards")
    if not isinstance(listed, list) or len(listed) != len(paths):
        return False
    for entry, path in zip(listed, paths):
        if not isinstance(entry, dict) or entry.get("name") != path.rstrip("/").rsplit("/", 1)[-1]:
            return False
        fs, fs_path = fsspec.core.url_to_fs(path)
        if entry.get("bytes") != fs.size(fs_path):
            return False
    return True
