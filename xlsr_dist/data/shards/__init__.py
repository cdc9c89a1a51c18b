"""The shard format: Parquet files of prepared utterances, one directory per split.

A split lives in ``<root>/<split>/`` as ``shard-00000-of-00008.parquet`` ... plus ``manifest.json`` (counts, hours,
duration histogram, character set, per-shard row counts and sha256) and, when written by prepare, ``report.json``.
Each shard has the columns ``id`` (string), ``audio`` (16 kHz mono PCM_16 FLAC bytes), ``text`` (normalised
transcript), ``duration`` (float64 seconds) and ``source`` (the original path or reference).

Row groups are small so a reader fetches a few utterances without reading a whole shard; the audio column is stored
uncompressed (FLAC already is), PLAIN-encoded and without statistics, so each FLAC blob sits verbatim in the file.
Next to each shard, ``<shard>.parquet.idx`` (written with it) records where: the byte offset and length of every
row's blob. A reader with a valid index fetches a row's audio with one ranged read instead of decoding a whole row
group of four columns (16x the bytes at 16-row groups). The Parquet file stays the source of truth: the index names
the shard's size and a hash of its footer, every blob read through it is checked (length prefix and ``fLaC``
magic), and a missing, stale or damaged index only means reads take the row-group path. ``write_manifest``
(re)builds missing or stale indexes. Locations are local directories or any fsspec URL
(file://, memory://, s3://, gs://, hf://).

This package is the import surface; the parts are ``schema`` (columns, file names, ShardError), ``writer``,
``index`` (the byte index), ``reader`` (listing, the open-file cache, metadata and row reads), ``manifest`` and
``publish`` (a split prepared locally, copied to an object store).
"""

from xlsr_dist.data.shards.index import INDEX_FORMAT, build_index, ensure_index, index_path, locate_blobs
from xlsr_dist.data.shards.manifest import (
    duration_histogram,
    read_manifest,
    sha256_file,
    verify_shard,
    write_manifest,
)
from xlsr_dist.data.shards.publish import is_local, publish_split
from xlsr_dist.data.shards.reader import (
    IO_STATS,
    clear_cache,
    filesystem,
    footer_digests,
    list_shards,
    read_audio,
    read_metadata,
    read_rows,
)
from xlsr_dist.data.shards.schema import (
    FORMAT,
    INDEX_SUFFIX,
    MANIFEST,
    REPORT,
    ROW_GROUP_SIZE,
    SCHEMA,
    ShardError,
    shard_name,
)
from xlsr_dist.data.shards.writer import ShardWriter, WrittenShard, write_shard

__all__ = [
    "FORMAT",
    "INDEX_FORMAT",
    "INDEX_SUFFIX",
    "IO_STATS",
    "MANIFEST",
    "REPORT",
    "ROW_GROUP_SIZE",
    "SCHEMA",
    "ShardError",
    "ShardWriter",
    "WrittenShard",
    "build_index",
    "clear_cache",
    "duration_histogram",
    "ensure_index",
    "filesystem",
    "footer_digests",
    "index_path",
    "is_local",
    "list_shards",
    "locate_blobs",
    "publish_split",
    "read_audio",
    "read_manifest",
    "read_metadata",
    "read_rows",
    "sha256_file",
    "shard_name",
    "verify_shard",
    "write_manifest",
    "write_shard",
]
