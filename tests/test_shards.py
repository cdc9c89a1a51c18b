"""data/shards: the on-disk format readers and writers agree on, local and through fsspec."""

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
from xlsr_dist import audio
from xlsr_dist.data import shards


def _rows(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        wave = sine(0.1 + 0.01 * (i % 7), 16000, freq=100 + i)
        out.append(
            {
                "id": f"utt{i:04d}",
                "audio": audio.encode_flac(wave),
                "text": f"text {'ab'[i % 2]}",
                "duration": len(wave) / 16000,
                "source": f"src/{i}.wav",
            }
        )
    return out


@pytest.fixture
def split(tmp_path) -> tuple[Path, list[dict]]:
    rows = _rows(0, 100)
    for k, chunk in enumerate([rows[:40], rows[40:70], rows[70:]]):
        shards.write_shard(tmp_path / shards.shard_name(k, 3), chunk)
    return tmp_path, rows


def test_write_shard_layout(split):
    d, rows = split
    names = sorted(os.listdir(d))
    # each shard with its byte index, no temp files left behind
    assert names == sorted(n for k in range(3) for n in (shards.shard_name(k, 3), shards.shard_name(k, 3) + ".idx"))
    pf = pq.ParquetFile(d / shards.shard_name(0, 3))
    assert pf.schema_arrow.equals(shards.SCHEMA)
    assert pf.metadata.num_row_groups == 3  # 40 rows in groups of 16: a reader can fetch a few rows
    col = {
        pf.metadata.row_group(0).column(c).path_in_schema: pf.metadata.row_group(0).column(c)
        for c in range(pf.metadata.num_columns)
    }
    assert col["audio"].compression == "UNCOMPRESSED"  # FLAC already is
    assert col["text"].compression == "ZSTD"


def test_list_shards_and_metadata(split):
    d, rows = split
    paths = shards.list_shards(d)
    assert paths == [str(d / shards.shard_name(k, 3)) for k in range(3)]
    before = dict(shards.IO_STATS)
    meta = shards.read_metadata(paths)
    assert meta.column_names == ["id", "duration", "text", "shard", "row", "blob_offset", "blob_length"]
    assert meta.column("id").to_pylist() == [r["id"] for r in rows]
    assert meta.column("shard").to_pylist() == [0] * 40 + [1] * 30 + [2] * 30
    assert meta.column("row").to_pylist() == list(range(40)) + list(range(30)) + list(range(30))
    assert np.allclose(meta.column("duration").to_numpy(), [r["duration"] for r in rows])
    assert shards.IO_STATS["row_groups_read"] == before["row_groups_read"]  # metadata never touches audio row reads
    # The positions listed from the byte indexes are each row's audio, read with one ranged read apiece, by a
    # process that parses no Parquet footer (as a rank mapping its node's catalog).
    digests = shards.footer_digests(paths)
    shards.clear_cache()
    footers = shards.IO_STATS["footers_parsed"]
    shard_of, offsets, lengths = (meta.column(c).to_pylist() for c in ("shard", "blob_offset", "blob_length"))
    for k, path in enumerate(paths):
        mine = [i for i, s in enumerate(shard_of) if s == k][::7]
        blobs = shards.read_audio(path, digests[k], [offsets[i] for i in mine], [lengths[i] for i in mine])
        assert blobs == [rows[i]["audio"] for i in mine]
    assert shards.IO_STATS["row_groups_read"] == before["row_groups_read"]
    assert shards.IO_STATS["footers_parsed"] == footers


def test_read_audio_refuses_a_rewritten_shard_and_distrusts_wrong_positions(split):
    d, rows = split
    paths = shards.list_shards(d)
    meta = shards.read_metadata(paths)
    digest = shards.footer_digests(paths)[2]
    offset, length = meta.column("blob_offset")[70].as_py(), meta.column("blob_length")[70].as_py()
    # A position off by one byte is not a blob: None tells the caller to read the row through Parquet.
    assert shards.read_audio(paths[2], digest, [offset + 1], [length]) is None
    assert shards.read_rows(paths[2], [0])[0]["audio"] == rows[70]["audio"]
    # Rewritten after the positions were listed: the rows a plan was made from are gone.
    shards.write_shard(paths[2], _rows(500, 30))
    with pytest.raises(shards.ShardError, match="changed after training started"):
        shards.read_audio(paths[2], digest, [offset], [length])


def test_read_rows_returns_asked_rows_in_order_reading_only_their_row_groups(split):
    d, rows = split
    path = shards.list_shards(d)[0]
    os.unlink(shards.index_path(path))  # the Parquet path (the byte index has its own tests below)
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    got = shards.read_rows(path, [33, 2, 17, 2])
    assert [g["id"] for g in got] == ["utt0033", "utt0002", "utt0017", "utt0002"]
    assert got[0]["audio"] == rows[33]["audio"] and got[0]["text"] == rows[33]["text"]
    assert set(got[0]) == {"id", "audio", "text", "duration"}
    assert shards.IO_STATS["row_groups_read"] - before["row_groups_read"] == 3  # groups 0, 1, 2 of 16 rows
    got = shards.read_rows(path, [20, 21])
    assert [g["id"] for g in got] == ["utt0020", "utt0021"]
    assert shards.IO_STATS["row_groups_read"] - before["row_groups_read"] == 4  # one more group, not the shard
    assert shards.IO_STATS["files_opened"] - before["files_opened"] == 1  # the footer was parsed once
    assert np.allclose(audio.decode_bytes(got[0]["audio"]), audio.decode_bytes(rows[20]["audio"]))
    with pytest.raises(IndexError, match="out of range"):
        shards.read_rows(path, [40])


def test_rewritten_shard_is_not_served_from_a_stale_cache(split):
    d, rows = split
    path = shards.list_shards(d)[2]
    assert shards.read_rows(path, [0])[0]["id"] == "utt0070"
    shards.write_shard(path, _rows(500, 30))
    assert shards.read_rows(path, [0])[0]["id"] == "utt0500"


def test_fsspec_memory_location(split):
    d, rows = split
    fs = fsspec.filesystem("memory")
    for k in range(3):
        fs.pipe(f"/xlsr-test-split/{shards.shard_name(k, 3)}", (d / shards.shard_name(k, 3)).read_bytes())
    fs.pipe("/xlsr-test-split/manifest.json", json.dumps({"num_utterances": 100}).encode())
    try:
        paths = shards.list_shards("memory://xlsr-test-split")
        assert [p.startswith("memory://") for p in paths] == [True] * 3
        meta = shards.read_metadata(paths)
        assert meta.column("id").to_pylist() == [r["id"] for r in rows]
        got = shards.read_rows(paths[1], [29, 0])
        assert [g["id"] for g in got] == ["utt0069", "utt0040"]
        assert got[1]["audio"] == rows[40]["audio"]
        assert shards.read_manifest("memory://xlsr-test-split")["num_utterances"] == 100
    finally:
        fs.rm("/xlsr-test-split", recursive=True)
        shards.clear_cache()


def test_list_shards_errors_name_the_location(tmp_path):
    with pytest.raises(shards.ShardError, match=str(tmp_path)):
        shards.list_shards(tmp_path)
    rows = _rows(0, 3)
    shards.write_shard(tmp_path / shards.shard_name(0, 3), rows)
    shards.write_shard(tmp_path / shards.shard_name(2, 3), rows)
    with pytest.raises(shards.ShardError, match="incomplete"):  # shard 1 of 3 is missing
        shards.list_shards(tmp_path)


def test_manifest(split):
    d, rows = split
    m = shards.write_manifest(d, extra={"split": "train"})
    assert m == shards.read_manifest(d)
    assert m["num_utterances"] == 100 and m["num_shards"] == 3 and m["split"] == "train"
    total = sum(r["duration"] for r in rows)
    assert m["total_seconds"] == pytest.approx(total, abs=1e-3)
    assert m["hours"] == pytest.approx(total / 3600, abs=1e-4)
    assert m["vocabulary"] == " abetx"
    assert sum(m["duration_seconds"]["histogram"]["counts"]) == 100
    for k, s in enumerate(m["shards"]):
        assert s["name"] == shards.shard_name(k, 3)
        assert s["sha256"] == hashlib.sha256((d / s["name"]).read_bytes()).hexdigest()
    assert [s["rows"] for s in m["shards"]] == [40, 30, 30]
    with pytest.raises(shards.ShardError, match="manifest"):
        shards.read_manifest(d / "nope")


def _all_rows(path: str, n: int) -> list[dict]:
    # Asked out of order and with a repeat: the order asked must come back whichever path serves it.
    order = list(range(n - 1, -1, -2)) + list(range(0, n, 2)) + [0]
    return shards.read_rows(path, order)


def test_byte_index_serves_rows_without_row_groups_identical_to_parquet(split):
    d, rows = split
    path = shards.list_shards(d)[0]
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    indexed = _all_rows(path, 40)
    assert shards.IO_STATS["row_groups_read"] == before["row_groups_read"]  # no row group decoded
    assert shards.IO_STATS["blobs_read"] - before["blobs_read"] == len(indexed)
    assert shards.IO_STATS["index_fallbacks"] == before["index_fallbacks"]
    os.unlink(shards.index_path(path))
    shards.clear_cache()
    assert _all_rows(path, 40) == indexed  # byte-identical audio, same id/text/duration, same order
    assert shards.IO_STATS["row_groups_read"] > before["row_groups_read"]
    assert [r["id"] for r in indexed[:2]] == ["utt0039", "utt0037"]
    assert indexed[0]["audio"] == rows[39]["audio"]


def test_index_of_other_content_is_ignored(split):
    d, rows = split
    p0, p1 = shards.list_shards(d)[:2]
    want = _all_rows(p0, 40)
    # another shard's index (valid JSON, plausible offsets) copied over this one's: its footer hash differs
    Path(shards.index_path(p0)).write_bytes(Path(shards.index_path(p1)).read_bytes())
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    assert _all_rows(p0, 40) == want
    assert shards.IO_STATS["blobs_read"] == before["blobs_read"]
    assert shards.IO_STATS["index_fallbacks"] - before["index_fallbacks"] == 1


def test_stale_index_after_rewrite_is_ignored_and_rebuilt_by_write_manifest(split):
    d, _ = split
    path = shards.list_shards(d)[2]
    old_index = Path(shards.index_path(path)).read_bytes()
    shards.write_shard(path, _rows(500, 30))
    Path(shards.index_path(path)).write_bytes(old_index)  # as if the new index never landed
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    got = shards.read_rows(path, [0, 29])
    assert [g["id"] for g in got] == ["utt0500", "utt0529"]
    assert got[0]["audio"] == _rows(500, 1)[0]["audio"]
    assert shards.IO_STATS["blobs_read"] == before["blobs_read"]  # served from Parquet
    os.unlink(shards.index_path(shards.list_shards(d)[0]))
    m = shards.write_manifest(d)
    assert [s["index"] for s in m["shards"]] == [shards.shard_name(k, 3) + ".idx" for k in range(3)]
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    assert shards.read_rows(path, [0, 29]) == got
    assert shards.read_rows(shards.list_shards(d)[0], [5])[0]["id"] == "utt0005"
    assert (
        shards.IO_STATS["blobs_read"] - before["blobs_read"] == 3
        and shards.IO_STATS["row_groups_read"] == before["row_groups_read"]
    )


def test_corrupt_index_offsets_fall_back_to_parquet(split):
    d, rows = split
    path = shards.list_shards(d)[1]
    idx = json.loads(Path(shards.index_path(path)).read_text())
    idx["offsets"] = [o + 1 for o in idx["offsets"]]  # footer still matches; the blobs are not there
    Path(shards.index_path(path)).write_text(json.dumps(idx))
    shards.clear_cache()
    before = dict(shards.IO_STATS)
    got = _all_rows(path, 30)
    assert [g["audio"] for g in got[-1:]] == [rows[40]["audio"]]
    assert got == [
        {k: rows[40 + i][k] for k in ("id", "audio", "text", "duration")}
        for i in list(range(29, -1, -2)) + list(range(0, 30, 2)) + [0]
    ]
    assert shards.IO_STATS["index_fallbacks"] - before["index_fallbacks"] == 1
    Path(shards.index_path(path)).write_text("{not json")
    shards.clear_cache()
    assert _all_rows(path, 30) == got


def test_orphan_indexes_are_removed_by_write_manifest(split):
    d, _ = split
    orphan = d / (shards.shard_name(7, 9) + ".idx")
    orphan.write_text("{}")
    shards.write_manifest(d)
    assert not orphan.exists()
    assert all(Path(shards.index_path(p)).exists() for p in shards.list_shards(d))


def test_locate_blobs_finds_duplicate_blobs_in_their_own_rows(tmp_path):
    rows = _rows(0, 6)
    for r in rows[3:]:
        r["audio"] = rows[0]["audio"]  # identical audio in four rows
    shards.write_shard(tmp_path / shards.shard_name(0, 1), rows, row_group_size=2)
    idx = json.loads((tmp_path / (shards.shard_name(0, 1) + ".idx")).read_text())
    assert len(set(idx["offsets"])) == 6 and idx["offsets"] == sorted(idx["offsets"])
    got = shards.read_rows(str(tmp_path / shards.shard_name(0, 1)), [5, 0, 4])
    assert [g["id"] for g in got] == ["utt0005", "utt0000", "utt0004"]
    assert all(g["audio"] == rows[0]["audio"] for g in got)


def test_byte_index_through_fsspec_memory(split):
    d, rows = split
    fs = fsspec.filesystem("memory")
    for k in range(3):
        for name in (shards.shard_name(k, 3), shards.shard_name(k, 3) + ".idx"):
            fs.pipe(f"/xlsr-idx-split/{name}", (d / name).read_bytes())
    try:
        paths = shards.list_shards("memory://xlsr-idx-split")
        shards.clear_cache()
        before = dict(shards.IO_STATS)
        indexed = _all_rows(paths[1], 30)
        assert shards.IO_STATS["blobs_read"] - before["blobs_read"] == len(indexed)
        assert shards.IO_STATS["row_groups_read"] == before["row_groups_read"]
        assert indexed[-1]["audio"] == rows[40]["audio"]
        fs.rm(f"/xlsr-idx-split/{shards.shard_name(1, 3)}.idx")
        shards.clear_cache()
        assert _all_rows(paths[1], 30) == indexed
        assert shards.IO_STATS["row_groups_read"] > before["row_groups_read"]
    finally:
        fs.rm("/xlsr-idx-split", recursive=True)
        shards.clear_cache()


def test_streamed_shard_records_the_checksum_and_index_of_the_file_it_wrote(tmp_path):
    path = tmp_path / shards.shard_name(0, 1)
    rows = _rows(0, 37)  # two full row groups and a partial one
    written = shards.write_shard(path, iter(rows))  # a stream: the writer never needs the rows as a list
    data = path.read_bytes()
    assert written.sha256 == hashlib.sha256(data).hexdigest() == shards.sha256_file(path)
    assert (written.rows, written.bytes) == (37, len(data))
    assert written.seconds == pytest.approx(sum(r["duration"] for r in rows))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    streamed = json.loads(Path(shards.index_path(path)).read_text())
    Path(shards.index_path(path)).unlink()
    assert shards.build_index(path)  # the index of the whole file read back, as before streaming
    assert streamed == json.loads(Path(shards.index_path(path)).read_text())


def test_a_failed_stream_leaves_no_shard(tmp_path):
    path = tmp_path / shards.shard_name(0, 1)
    rows = _rows(0, 20)

    def failing():
        yield from rows
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        shards.write_shard(path, failing())
    assert os.listdir(tmp_path) == []
