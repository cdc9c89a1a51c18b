"""A split prepared in a local directory, copied to its fsspec URL (s3://, gs://, ...): how prepare writes to an
object store.

Object stores have no rename, so the local guarantee (a shard file appears only once fully written, ``atomic.py``)
becomes the stores' own: an object appears only once its upload completes (an S3 PUT, multipart uploads included,
is atomic per object), so a reader never sees part of a shard, index or manifest. Across objects the order carries
the rest: the shards and their byte indexes first, then the removal of files a previous plan left under the same
URL, then ``report.json``, and ``manifest.json`` last, so a split whose manifest is there is complete. A reader
listing the split mid-copy sees an incomplete or mixed shard set, which ``list_shards`` refuses by name.
"""

from __future__ import annotations

from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from xlsr_dist.data.shards.reader import filesystem
from xlsr_dist.data.shards.schema import INDEX_SUFFIX, MANIFEST, REPORT, SHARD_FILE_PATTERN


def is_local(location: str) -> bool:
    """True when ``location`` (a path or fsspec URL) is on this machine's filesystem (a path or file:// URL)."""
    fs, _ = filesystem(location)
    return isinstance(fs, LocalFileSystem)


def publish_split(split_dir: Path, url: str) -> None:
    """Copy the shards, byte indexes, report and manifest of the local ``split_dir`` to ``url`` (one split), in the
    order the module docstring gives; remove shard files under ``url`` that the split does not have."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    shard_files = sorted(p for p in split_dir.iterdir() if SHARD_FILE_PATTERN.search(p.name) or _is_index(p.name))
    fs.makedirs(root, exist_ok=True)
    for local in shard_files:
        fs.put_file(str(local), f"{root}/{local.name}")
    keep = {p.name for p in shard_files}
    for remote in fs.glob(f"{root}/shard-*.parquet*"):
        if remote.rsplit("/", 1)[-1] not in keep:
            fs.rm_file(remote)
    for name in (REPORT, MANIFEST):
        if (split_dir / name).is_file():
            fs.put_file(str(split_dir / name), f"{root}/{name}")


def _is_index(name: str) -> bool:
    return name.endswith(INDEX_SUFFIX) and bool(SHARD_FILE_PATTERN.search(name[: -len(INDEX_SUFFIX)]))
