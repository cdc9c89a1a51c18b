"""shards.py: the on-disk format readers and writers agree on, local and through fsspec."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests._corpus import sine
from xlsr_dist import audio as A
from xlsr_dist.data import shards as S


def _rows(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        wave = sine(0.1 + 0.01 * (i % 7), 16000, freq=100 + i)
        out.append({"id": f"utt{i:04d}", "audio": A.encode_flac(wave), "text": f"text {'ab'[i % 2]}",
                    "duration": len(wave) / 16000, "source": f"src/{i}.wav"})
    return out


@pytest.fixture
def split(tmp_path) -> tuple[Path, list[dict]]:
    rows = _rows(0, 100)
    for k, chunk in enumerate([rows[:40], rows[40:70], rows[70:]]):
        S.write_shard(tmp_path / S.shard_name(k, 3), chunk)
    return tmp_path, rows


def test_write_shard_layout(split):
    d, rows = split
    names = sorted(os.listdir(d))
    assert names == [S.shard_name(k, 3) for k in range(3)]  # no temp files left behind
    pf = pq.ParquetFile(d / S.shard_name(0, 3))
    assert pf.schema_arrow.equals(S.SCHEMA)
    assert pf.metadata.num_row_groups == 3  # 40 rows in groups of 16: a reader can fetch a few rows
    col = {pf.metadata.row_group(0).column(c).path_in_schema: pf.metadata.row_group(0).column(c)
           for c in range(pf.metadata.num_columns)}
    assert col["audio"].compression == "UNCOMPRESSED"  # FLAC already is
    assert col["text"].compression == "ZSTD"


def test_list_shards_and_metadata(split):
    d, rows = split
    paths = S.list_shards(d)
    assert paths == [str(d / S.shard_name(k, 3)) for k in range(3)]
    before = dict(S.IO_STATS)
    meta = S.read_metadata(paths)
    assert meta.column_names == ["id", "duration", "text", "shard", "row"]
    assert meta.column("id").to_pylist() == [r["id"] for r in rows]
    assert meta.column("shard").to_pylist() == [0] * 40 + [1] * 30 + [2] * 30
    assert meta.column("row").to_pylist() == list(range(40)) + list(range(30)) + list(range(30))
    assert np.allclose(meta.column("duration").to_numpy(), [r["duration"] for r in rows])
    assert S.IO_STATS["row_groups_read"] == before["row_groups_read"]  # metadata never touches audio row reads


def test_read_rows_returns_asked_rows_in_order_reading_only_their_row_groups(split):
    d, rows = split
    path = S.list_shards(d)[0]
    S.clear_cache()
    before = dict(S.IO_STATS)
    got = S.read_rows(path, [33, 2, 17, 2])
    assert [g["id"] for g in got] == ["utt0033", "utt0002", "utt0017", "utt0002"]
    assert got[0]["audio"] == rows[33]["audio"] and got[0]["text"] == rows[33]["text"]
    assert set(got[0]) == {"id", "audio", "text", "duration"}
    assert S.IO_STATS["row_groups_read"] - before["row_groups_read"] == 3  # groups 0, 1, 2 of 16 rows
    got = S.read_rows(path, [20, 21])
    assert [g["id"] for g in got] == ["utt0020", "utt0021"]
    assert S.IO_STATS["row_groups_read"] - before["row_groups_read"] == 4  # one more group, not the shard
    assert S.IO_STATS["files_opened"] - before["files_opened"] == 1  # the footer was parsed once
    assert np.allclose(A.decode_bytes(got[0]["audio"]), A.decode_bytes(rows[20]["audio"]))
    with pytest.raises(IndexError, match="out of range"):
        S.read_rows(path, [40])


def test_rewritten_shard_is_not_served_from_a_stale_cache(split):
    d, rows = split
    path = S.list_shards(d)[2]
    assert S.read_rows(path, [0])[0]["id"] == "utt0070"
    S.write_shard(path, _rows(500, 30))
    assert S.read_rows(path, [0])[0]["id"] == "utt0500"


def test_fsspec_memory_location(split):
    d, rows = split
    fs = fsspec.filesystem("memory")
    for k in range(3):
        fs.pipe(f"/xlsr-test-split/{S.shard_name(k, 3)}", (d / S.shard_name(k, 3)).read_bytes())
    fs.pipe("/xlsr-test-split/manifest.json", json.dumps({"num_utterances": 100}).encode())
    try:
        paths = S.list_shards("memory://xlsr-test-split")
        assert [p.startswith("memory://") for p in paths] == [True] * 3
        meta = S.read_metadata(paths)
        assert meta.column("id").to_pylist() == [r["id"] for r in rows]
        got = S.read_rows(paths[1], [29, 0])
        assert [g["id"] for g in got] == ["utt0069", "utt0040"]
        assert got[1]["audio"] == rows[40]["audio"]
        assert S.read_manifest("memory://xlsr-test-split")["num_utterances"] == 100
    finally:
        fs.rm("/xlsr-test-split", recursive=True)
        S.clear_cache()


def test_list_shards_errors_name_the_location(tmp_path):
    with pytest.raises(S.ShardError, match=str(tmp_path)):
        S.list_shards(tmp_path)
    rows = _rows(0, 3)
    S.write_shard(tmp_path / S.shard_name(0, 3), rows)
    S.write_shard(tmp_path / S.shard_name(2, 3), rows)
    with pytest.raises(S.ShardError, match="incomplete"):  # shard 1 of 3 is missing
        S.list_shards(tmp_path)


def test_manifest(split):
    d, rows = split
    m = S.write_manifest(d, extra={"split": "train"})
    assert m == S.read_manifest(d)
    assert m["num_utterances"] == 100 and m["num_shards"] == 3 and m["split"] == "train"
    total = sum(r["duration"] for r in rows)
    assert m["total_seconds"] == pytest.approx(total, abs=1e-3)
    assert m["hours"] == pytest.approx(total / 3600, abs=1e-4)
    assert m["vocabulary"] == " abetx"
    assert sum(m["duration_seconds"]["histogram"]["counts"]) == 100
    for k, s in enumerate(m["shards"]):
        assert s["name"] == S.shard_name(k, 3)
        assert s["sha256"] == hashlib.sha256((d / s["name"]).read_bytes()).hexdigest()
    assert [s["rows"] for s in m["shards"]] == [40, 30, 30]
    with pytest.raises(S.ShardError, match="manifest"):
        S.read_manifest(d / "nope")
