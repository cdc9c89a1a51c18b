"""A demo split relabelled as another Latin-script language, for mixed-language runs without espeak-ng or a real
corpus: the same audio, every 'e' of the transcripts written 'é', and a manifest recording French settings (which keep
accents; English folds them to 'e'). The audio no longer matches the letters exactly; a few-step run does not care."""

from __future__ import annotations

from pathlib import Path

from xlsr_dist.data import language, shards
from xlsr_dist.text import TextNormalization

FRENCH = TextNormalization("fr")


def french_copy(source: Path, dest: Path, normalization: TextNormalization = FRENCH) -> Path:
    """``dest``: the split at ``source`` with 'e' -> 'é' in every transcript, recorded as ``normalization``."""
    dest.mkdir(parents=True)
    paths = shards.list_shards(str(source))
    for k, path in enumerate(paths):
        count = shards.read_metadata([path]).num_rows
        rows = shards.read_rows(path, range(count))
        shards.write_shard(
            dest / shards.shard_name(k, len(paths)),
            [{**r, "text": r["text"].replace("e", "é"), "source": f"french:{r['id']}"} for r in rows],
        )
    shards.write_manifest(dest, extra={language.MANIFEST_KEY: normalization.to_dict()})
    return dest
