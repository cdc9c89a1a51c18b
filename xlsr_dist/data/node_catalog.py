"""One copy of a split's catalog per node, not one per rank.

Every rank needs the whole catalog (the epoch plan indexes into all of it), and at 1M utterances it is ~100 MB of
numpy arrays: eight private copies on an eight-GPU node would be most of a gigabyte, and eight ranks reading the same
metadata columns and byte indexes at start-up would share the node's cores and disks for nothing. So the node's first
rank builds it and writes it to one file in the node's temporary directory (``$TMPDIR``), every rank of the node maps
that file read-only (the page cache holds it once, shared), and the file is unlinked as soon as all of them have it
mapped (the mappings keep its pages). A rank that cannot map its node's copy builds its own.

The file is a fixed header, a JSON description of the arrays (dtype, shape, offset) and the small lists (shard paths
and digests, the skip report), then the arrays, each 64-byte aligned.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_dist import world as world_module
from xlsr_dist.data.catalog import Catalog, PackedStrings
from xlsr_dist.data.shards import ShardError
from xlsr_dist.world import World

log = logging.getLogger(__name__)

_MAGIC = b"XLSRCAT1"
_ALIGN = 64


def _arrays(catalog: Catalog) -> dict[str, np.ndarray]:
    ids = catalog.ids
    labels_start = int(catalog.label_offsets[0])
    return {
        "id_bytes": ids.data[ids.offsets[0] : ids.offsets[-1]],
        "id_offsets": ids.offsets - ids.offsets[0],
        "durations": catalog.durations,
        "shard": catalog.shard,
        "row": catalog.row,
        "label_flat": catalog.label_flat[labels_start : int(catalog.label_offsets[-1])],
        "label_offsets": catalog.label_offsets - labels_start,
        "blob_offset": catalog.blob_offset,
        "blob_length": catalog.blob_length,
    }


def write(catalog: Catalog, directory: str | None = None) -> str:
    """Write ``catalog`` to a new file in ``directory`` (default: the temporary directory); returns its path."""
    arrays = {name: np.ascontiguousarray(a) for name, a in _arrays(catalog).items()}
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, a in arrays.items():
        layout[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    header = json.dumps(
        {
            "arrays": layout,
            "shard_paths": catalog.shard_paths,
            "shard_digests": catalog.shard_digests,
            "report": catalog.report,
        }
    ).encode()
    start = -(-(len(_MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
    fd, path = tempfile.mkstemp(prefix="xlsr_dist-catalog-", suffix=".bin", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            for name, a in arrays.items():
                f.seek(start + layout[name]["offset"])
                f.write(memoryview(a).cast("B"))
            f.truncate(start + offset)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return path


def load(path: str) -> Catalog:
    """The catalog in the file at ``path``, its arrays mapped read-only (no copy is made)."""
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buffer[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"{path} is not an xlsr_dist catalog")
    (length,) = struct.unpack("<Q", buffer[len(_MAGIC) : len(_MAGIC) + 8])
    header = json.loads(buffer[len(_MAGIC) + 8 : len(_MAGIC) + 8 + length])
    start = -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN

    def array(name: str) -> np.ndarray:
        spec = header["arrays"][name]
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        count = int(np.prod(shape))
        if count == 0:
            return np.zeros(shape, dtype=dtype)
        return np.frombuffer(buffer, dtype=dtype, count=count, offset=start + spec["offset"]).reshape(shape)

    return Catalog(
        ids=PackedStrings(array("id_bytes"), array("id_offsets")),
        durations=array("durations"),
        shard=array("shard"),
        row=array("row"),
        label_flat=array("label_flat"),
        label_offsets=array("label_offsets"),
        blob_offset=array("blob_offset"),
        blob_length=array("blob_length"),
        shard_paths=list(header["shard_paths"]),
        shard_digests=list(header["shard_digests"]),
        report=list(header["report"]),
    )


def node_shared(world: World, build: Callable[[], Catalog]) -> Catalog:
    """``build()``'s catalog, built once per node and mapped by each of its ranks. A collective: every rank calls it
    at the same point; without a process group, or alone on its node, a rank just builds it."""
    if world.local_world_size <= 1 or not world_module.is_initialized():
        return build()
    path, error, failure = "", "", None
    if world.is_local_main:
        try:
            catalog = build()
            path = write(catalog)
            del catalog  # the mapped copy below replaces this rank's private one
        except Exception as exc:  # every rank must reach the gather, or the node's others wait for the timeout
            failure, error = exc, f"{type(exc).__name__}: {exc}"
    node = world_module.node_id(world)
    built = world_module.all_gather_object((node, world.local_rank, path, error))
    failed = [(rank, message) for rank, (_, _, _, message) in enumerate(built) if message]
    if failed:
        if path:
            Path(path).unlink(missing_ok=True)
        if failure is not None:
            raise failure
        rank, message = failed[0]
        raise ShardError(f"rank {rank} could not list the utterances: {message}")
    source = next((p for n, local_rank, p, _ in built if n == node and local_rank == 0 and p), "")
    mapped: Catalog | None = None
    try:
        mapped = load(source) if source else None
    except (OSError, ValueError) as exc:
        log.warning("cannot map this node's catalog %s (%s): building this rank's own", source, exc)
    if not source:
        log.warning("no rank of this node (%s) with LOCAL_RANK 0 listed a catalog: building this rank's own", node)
    # The file goes only once every rank of the node has mapped it; the mappings keep its pages.
    world_module.barrier()
    if path:
        Path(path).unlink(missing_ok=True)
    return mapped if mapped is not None else build()
