"""One catalog per node: the file format round trip, and real gloo ranks sharing their node's copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests._dist import base_env, run_ranks
from tests._many_shards import WORDS, write_split
from xlsr_dist.config import DataConfig
from xlsr_dist.data import node_catalog, shards
from xlsr_dist.data.catalog import Catalog, build_catalog
from xlsr_dist.text import build_vocab


def _frames(samples: int) -> int:
    return samples // 320


def _same(a: Catalog, b: Catalog) -> None:
    assert list(a.ids) == list(b.ids)
    for name in ("durations", "shard", "row", "label_flat", "label_offsets", "blob_offset", "blob_length"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.shard_paths, a.shard_digests, a.report) == (b.shard_paths, b.shard_digests, b.report)
    assert a.fingerprint() == b.fingerprint()


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_split(tmp_path_factory.mktemp("many") / "train", 3000, 3, row_group_size=64)


def test_a_written_catalog_maps_back_identical_and_read_only(split: str, tmp_path: Path) -> None:
    built = build_catalog(split, build_vocab(WORDS), DataConfig(min_duration_in_seconds=0.18), _frames)
    assert built.report and (built.blob_length > 0).all()  # skips to carry over, positions to read through
    for catalog in (built, built.head(1000), built.head(0)):
        mapped = node_catalog.load(node_catalog.write(catalog, str(tmp_path)))
        _same(catalog, mapped)
        assert len(mapped) == 0 or not mapped.durations.flags.writeable
    rows = [int(i) for i in np.flatnonzero(built.shard == 1)[:5]]
    blobs = shards.read_audio(
        built.shard_paths[1], built.shard_digests[1], built.blob_offset[rows], built.blob_length[rows]
    )
    assert blobs == [r["audio"] for r in shards.read_rows(built.shard_paths[1], built.row[rows])]


def test_not_a_catalog_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"PAR1" * 40)
    with pytest.raises(ValueError, match="not an xlsr_dist catalog"):
        node_catalog.load(str(tmp_path / "x.bin"))


def _run(split: str, tmp_path: Path, world: int) -> tuple[list[dict], Path]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    results = run_ranks(
        ["tests/_node_catalog_rank.py", split, str(tmp_path / "rank{rank}.json")],
        world_size=world,
        timeout=240,
        env=base_env(TMPDIR=str(tmp)),
        log_dir=tmp_path / "logs",
    )
    out = []
    for r in results:
        path = tmp_path / f"rank{r.rank}.json"
        assert path.exists(), f"rank {r.rank} wrote no record (exit {r.returncode}):\n{r.output[-2000:]}"
        out.append(json.loads(path.read_text()) | {"returncode": r.returncode})
    return out, tmp


@pytest.mark.slow
def test_ranks_of_a_node_map_one_copy_built_by_its_first_rank(split: str, tmp_path: Path) -> None:
    records, tmp = _run(split, tmp_path, 4)
    assert [r["returncode"] for r in records] == [0, 0, 0, 0], records
    # Only the node's first rank read the shards' metadata and indexes; the others opened no file to build.
    assert records[0]["files_opened_building"] == 3
    assert [r["files_opened_building"] for r in records[1:]] == [0, 0, 0]
    # Every rank maps the same catalog: same corpus, same plan; each reads its own share of step 0 through the
    # listed audio positions (no Parquet row group decoded).
    assert all(r["mapped"] for r in records)
    assert len({r["fingerprint"] for r in records}) == 1 and records[0]["utterances"] == 3000
    assert len({tuple(r["step0"]) for r in records}) == 1
    assert sorted(uid for r in records for uid in r["mine"]) == sorted(records[0]["step0"])
    assert all(r["row_groups_read"] == 0 for r in records)
    # The node's copy is gone from $TMPDIR (removed once every rank had mapped it).
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
def test_a_failed_build_fails_every_rank_instead_of_hanging(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    records, tmp = _run(str(empty), tmp_path, 2)
    assert records[0]["error"].startswith("ShardError: no shards")
    assert records[1]["error"].startswith("ShardError: rank 0 could not list the utterances: ShardError: no shards")
    assert [r["returncode"] for r in records] == [3, 3]
    assert list(tmp.iterdir()) == []
