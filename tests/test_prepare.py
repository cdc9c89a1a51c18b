"""prepare: every corpus layout becomes shards; bad items are skipped and named; re-runs keep finished shards."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tests._corpus import SR, audio_bytes, good_items, make_bad_corpus, make_many_corpus, sine, write_jsonl
from xlsr_dist import audio, prepare
from xlsr_dist.data import convert, shards
from xlsr_dist.data.recipes import detect_layout
from xlsr_dist.data.recipes.items import Item, PrepareError
from xlsr_dist.data.skip_reasons import DUPLICATE_ID, MALFORMED_ENTRY

REPO = Path(__file__).resolve().parents[1]


def _prepare(*args: str) -> list[dict]:
    return prepare.run([*args, "--no_progress"])


def _split_rows(split_dir: Path) -> dict[str, dict]:
    paths = shards.list_shards(split_dir)
    out = {}
    for p in paths:
        n = shards.read_metadata([p]).num_rows
        for r in shards.read_rows(p, range(n)):
            out[r["id"]] = r
    return out


def test_bad_corpus_skips_and_names_every_bad_item_and_keeps_every_good_one(tmp_path, capsys):
    tsv, good_ids, bad = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    [report] = _prepare(
        "--layout", "folder", "--input", str(tsv), "--output", str(out), "--num_shards", "3", "--num_workers", "2"
    )
    rows = _split_rows(out / "train")
    assert sorted(rows) == good_ids
    for g in good_items():
        row = rows[g.id]
        assert row["text"] == g.norm
        wave = audio.decode_bytes(row["audio"])
        assert abs(len(wave) - len(g.expected)) <= 1, g.name
        n = min(len(wave), len(g.expected))
        assert np.abs(wave[:n] - g.expected[:n]).max() <= g.tolerance + 1 / 32768, g.name
        assert row["duration"] == pytest.approx(len(wave) / SR)
    skipped = {s["id"]: s for s in report["skipped"]}
    assert set(skipped) == set(bad)
    for uid, reason in bad.items():
        assert reason in skipped[uid]["reason"], (uid, skipped[uid])
    on_disk = json.loads((out / "train" / "report.json").read_text())
    assert on_disk["skipped"] == report["skipped"] and on_disk["prepared"] == len(good_ids)
    printed = capsys.readouterr().out
    assert f"prepared {len(good_ids)} utterances" in printed
    assert f"skipped {len(bad)}: " in printed and "2 truncated audio" in printed and "1 missing audio file" in printed
    manifest = shards.read_manifest(out / "train")
    assert manifest["num_utterances"] == len(good_ids) and manifest["skipped"] == len(bad)
    assert set(manifest["vocabulary"]) <= set("abcdefghijklmnopqrstuvwxyz' ")


def _shard_state(split_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(split_dir.glob("shard-*.parquet"))}


def test_rerun_keeps_finished_shards_and_rebuilds_missing_or_damaged_ones(tmp_path):
    tsv, good_ids, _ = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    args = ("--input", str(tsv), "--output", str(out), "--num_shards", "4", "--num_workers", "1")
    first = _prepare(*args)[0]
    assert first["shards_built"] == 4
    before = _shard_state(out / "train")

    names = list(before)
    lost_index = out / "train" / (names[0] + shards.INDEX_SUFFIX)
    lost_index.unlink()  # e.g. a copy that kept only *.parquet: the shard is still good, its index is rebuilt
    again = _prepare(*args)[0]
    assert (again["shards_reused"], again["shards_built"]) == (4, 0)
    assert _shard_state(out / "train") == before
    assert lost_index.is_file() and shards.read_manifest(out / "train")["shards"][0]["index"] == lost_index.name
    assert again["skipped"] == first["skipped"]  # the report still names items skipped in reused shards

    (out / "train" / names[1]).unlink()
    damaged = out / "train" / names[2]
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")  # same size, wrong checksum
    third = _prepare(*args)[0]
    assert (third["shards_reused"], third["shards_built"]) == (2, 2)
    after = _shard_state(out / "train")
    assert after[names[0]] == before[names[0]] and after[names[3]] == before[names[3]]
    assert sorted(_split_rows(out / "train")) == good_ids

    fewer = _prepare("--input", str(tsv), "--output", str(out), "--num_shards", "2", "--num_workers", "1")[0]
    assert fewer["shards_built"] == 2
    assert len(shards.list_shards(out / "train")) == 2  # shards of the old plan were removed
    assert sorted(p.name for p in (out / "train").glob("*.idx")) == [
        shards.shard_name(k, 2) + shards.INDEX_SUFFIX for k in range(2)
    ]  # and their indexes
    assert sorted(_split_rows(out / "train")) == good_ids


def test_output_is_deterministic_whatever_the_worker_count(tmp_path):
    tsv, _, _ = make_bad_corpus(tmp_path / "corpus")
    for workers in ("1", "2"):
        _prepare(
            "--input",
            str(tsv),
            "--output",
            str(tmp_path / f"out{workers}"),
            "--num_shards",
            "3",
            "--num_workers",
            workers,
        )
    m1, m2 = (shards.read_manifest(tmp_path / f"out{w}" / "train") for w in ("1", "2"))
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    ids = shards.read_metadata(shards.list_shards(tmp_path / "out1" / "train")).column("id").to_pylist()
    assert ids == sorted(ids)  # contiguous runs of the sorted ids


def _write(path: Path, seconds: float, sr: int = SR, fmt: str | None = None, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, sine(seconds, sr, channels=channels), sr, format=fmt)


def test_commonvoice_layout(tmp_path):
    cv = tmp_path / "cv"
    sentences = {
        "train": ["First clip.", 'Second, with "quotes', "third\u2028line"],
        "dev": ["dev one"],
        "test": ["test 2"],
    }
    for split, texts in sentences.items():
        lines = ["client_id\tpath\tsentence\tup_votes"]
        for k, t in enumerate(texts):
            name = f"common_voice_en_{split}_{k}.mp3"
            _write(cv / "clips" / name, 0.8, 48000, "MP3", channels=2)
            lines.append(f"abc\t{name}\t{t}\t2")
        (cv / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    reports = _prepare("--input", str(cv), "--output", str(tmp_path / "out"), "--num_workers", "1")
    assert [r["split"] for r in reports] == ["train", "dev", "test"] and reports[0]["layout"] == "commonvoice"
    rows = _split_rows(tmp_path / "out" / "train")
    assert sorted(r["text"] for r in rows.values()) == ["first clip", "second with quotes", "third line"]
    [shard] = shards.list_shards(tmp_path / "out" / "train")  # a tiny split: one shard of the default size
    sources = pq.read_table(shard, columns=["id", "source"]).to_pylist()
    assert sources[0] == {"id": "common_voice_en_train_0.mp3", "source": "clips/common_voice_en_train_0.mp3"}
    assert abs(len(audio.decode_bytes(rows["common_voice_en_train_0.mp3"]["audio"])) - 0.8 * SR) <= 1
    assert [r["text"] for r in _split_rows(tmp_path / "out" / "test").values()] == ["test two"]


def test_librispeech_layout(tmp_path):
    ls = tmp_path / "LibriSpeech"
    for subset, speakers in {"train-clean-100": ["19", "26"], "dev-clean": ["84"]}.items():
        for spk in speakers:
            chapter = ls / subset / spk / "198"
            lines = []
            for u in range(2):
                uid = f"{spk}-198-{u:04d}"
                _write(chapter / f"{uid}.flac", 1.6 + 0.1 * u)
                lines.append(f"{uid} WORDS OF SPEAKER {spk} NUMBER {u}")
            lines.append(f"{spk}-198-0009 THIS ONE HAS NO AUDIO")
            (chapter / f"{spk}-198.trans.txt").write_text("\n".join(lines) + "\n")
    reports = _prepare(
        "--input",
        str(ls),
        "--output",
        str(tmp_path / "out"),
        "--split",
        "train-clean-100",
        "dev-clean",
        "--num_shards",
        "2",
        "--num_workers",
        "1",
    )
    assert reports[0]["layout"] == "librispeech"
    train = _split_rows(tmp_path / "out" / "train-clean-100")
    assert sorted(train) == ["19-198-0000", "19-198-0001", "26-198-0000", "26-198-0001"]
    assert train["26-198-0001"]["text"] == "words of speaker twenty six number one"
    assert train["26-198-0001"]["duration"] == pytest.approx(1.7)
    assert {s["id"]: s["reason"] for s in reports[0]["skipped"]} == {
        "19-198-0009": "missing audio file",
        "26-198-0009": "missing audio file",
    }
    assert sorted(_split_rows(tmp_path / "out" / "dev-clean")) == ["84-198-0000", "84-198-0001"]


def test_nemo_layout(tmp_path):
    d = tmp_path / "nemo"
    _write(d / "wavs" / "a.wav", 1.0, 22050)
    _write(d / "wavs" / "b.wav", 0.5)
    write_jsonl(
        d / "train_manifest.json",
        [
            {"audio_filepath": "wavs/a.wav", "duration": 1.0, "text": "Alpha"},
            {"audio_filepath": str(d / "wavs" / "b.wav"), "duration": 0.5, "text": "bravo"},
            {"duration": 3.0, "text": "no path"},
        ],
    )
    with open(d / "train_manifest.json", "a") as f:
        f.write("{not json\n")
    [r] = _prepare(
        "--input",
        str(d / "train_manifest.json"),
        "--output",
        str(tmp_path / "out"),
        "--split",
        "mine",
        "--num_workers",
        "1",
    )
    assert r["layout"] == "nemo" and r["split"] == "mine"
    rows = _split_rows(tmp_path / "out" / "mine")
    assert {k: v["text"] for k, v in rows.items()} == {"wavs/a.wav": "alpha", str(d / "wavs" / "b.wav"): "bravo"}
    assert rows["wavs/a.wav"]["duration"] == pytest.approx(1.0, abs=1e-4)
    assert sorted(s["id"] for s in r["skipped"]) == ["train_manifest.json:3", "train_manifest.json:4"]
    assert {s["reason"] for s in r["skipped"]} == {MALFORMED_ENTRY}


def test_folder_layout_csv_with_other_column_names_and_a_clear_error_otherwise(tmp_path):
    d = tmp_path / "folder"
    _write(d / "x" / "one.wav", 0.7, 8000)
    (d / "meta.csv").write_text('file_name,transcription\nx/one.wav,"Hello, there"\nx/one.wav,again\n')
    [r] = _prepare("--input", str(d), "--output", str(tmp_path / "out"), "--num_workers", "1")
    assert r["layout"] == "folder"
    assert _split_rows(tmp_path / "out" / "train").keys() == {"x/one.wav"}
    assert _split_rows(tmp_path / "out" / "train")["x/one.wav"]["text"] == "hello there"  # the first entry wins
    assert [(s["id"], s["reason"]) for s in r["skipped"]] == [("x/one.wav", DUPLICATE_ID)]

    (d / "meta.csv").write_text("wavefile,words\nx/one.wav,hi\n")
    with pytest.raises(PrepareError, match=r"meta.csv: cannot tell which column holds the audio path"):
        _prepare("--input", str(d), "--output", str(tmp_path / "out2"))
    # the CLI turns it into a one-line error and exit status 2, not a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.prepare", "--input", str(d / "meta.csv"), "--output", str(tmp_path / "out2")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "cannot tell which column holds the audio path" in proc.stderr and "Traceback" not in proc.stderr


def _hf_rows(tmp_path: Path) -> tuple[list[dict], list[str]]:
    src = tmp_path / "hf_src"
    src.mkdir()
    _write(src / "on_disk.wav", 0.9, 44100, channels=2)
    rows = [
        {"audio": {"bytes": audio_bytes(sine(1.0, 8000), 8000), "path": "x.wav"}, "sentence": "From bytes"},
        {"audio": {"bytes": audio_bytes(sine(0.5, SR), SR, "FLAC"), "path": None}, "sentence": "flac bytes"},
        {"audio": {"bytes": None, "path": str(src / "on_disk.wav")}, "sentence": "from a path"},
        {"audio": {"bytes": b"garbage" * 30, "path": None}, "sentence": "broken"},
    ]
    return rows, ["From bytes", "flac bytes", "from a path", "broken"]


def test_hf_layout_save_to_disk_and_local_parquet(tmp_path):
    import datasets

    rows, _ = _hf_rows(tmp_path)
    ds = datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio())
    dd = datasets.DatasetDict(train=ds, validation=ds.select([0]))
    dd.save_to_disk(str(tmp_path / "saved"))
    reports = _prepare(
        "--input",
        str(tmp_path / "saved"),
        "--output",
        str(tmp_path / "out"),
        "--hf_split",
        "train",
        "validation",
        "--split",
        "train",
        "eval",
        "--num_workers",
        "2",
        "--num_shards",
        "2",
    )
    assert [r["split"] for r in reports] == ["train", "eval"] and reports[0]["layout"] == "hf"
    train = _split_rows(tmp_path / "out" / "train")
    assert {k: v["text"] for k, v in train.items()} == {
        "000000000": "from bytes",
        "000000001": "flac bytes",
        "000000002": "from a path",
    }
    assert abs(len(audio.decode_bytes(train["000000000"]["audio"])) - SR) <= 1  # 8 kHz bytes resampled
    assert abs(len(audio.decode_bytes(train["000000002"]["audio"])) - 0.9 * SR) <= 1  # 44.1 kHz stereo file
    assert [(s["id"], s["reason"]) for s in reports[0]["skipped"]] == [("000000003", "unreadable audio")]
    assert list(_split_rows(tmp_path / "out" / "eval")) == ["000000000"]

    # a local data directory load_dataset reads (Parquet files with the Audio feature), with an id column
    pq_dir = tmp_path / "pq" / "data"
    pq_dir.mkdir(parents=True)
    ds.add_column("id", ["a", "b", "c", "d"]).to_parquet(str(pq_dir / "train-00000-of-00001.parquet"))
    [r] = _prepare(
        "--layout",
        "hf",
        "--input",
        str(tmp_path / "pq"),
        "--output",
        str(tmp_path / "out2"),
        "--hf_cache_dir",
        str(tmp_path / "hf_cache"),
        "--num_workers",
        "1",
    )
    assert sorted(_split_rows(tmp_path / "out2" / "train")) == ["a", "b", "c"]
    assert r["skipped"][0]["id"] == "d"


def test_auto_layout_detection(tmp_path):
    (tmp_path / "cv" / "clips").mkdir(parents=True)
    (tmp_path / "cv" / "train.tsv").write_text("path\tsentence\n")
    (tmp_path / "ls" / "1" / "2").mkdir(parents=True)
    (tmp_path / "ls" / "1" / "2" / "1-2.trans.txt").write_text("")
    (tmp_path / "m.jsonl").write_text("")
    (tmp_path / "t.tsv").write_text("")
    assert detect_layout(str(tmp_path / "cv")) == "commonvoice"
    assert detect_layout(str(tmp_path / "ls")) == "librispeech"
    assert detect_layout(str(tmp_path / "m.jsonl")) == "nemo"
    assert detect_layout(str(tmp_path / "t.tsv")) == "folder"
    assert detect_layout("some-org/some-dataset") == "hf"
    with pytest.raises(PrepareError, match="no such file"):
        detect_layout(str(tmp_path / "absent"))


def _die_on_garbage(item: Item, settings: convert.Settings):
    if item.id.endswith("garbage.wav"):
        os._exit(1)  # what a crash inside a native decoder looks like to the pool
    return _real_process_item(item, settings)


_real_process_item = convert.process_item


def test_a_dead_worker_is_an_error_naming_the_item_not_a_hang(tmp_path, monkeypatch):
    tsv, _, _ = make_bad_corpus(tmp_path / "corpus")
    monkeypatch.setattr(convert, "process_item", _die_on_garbage)  # inherited by the forked workers
    monkeypatch.setattr(convert, "RESULT_TIMEOUT_S", 3.0)
    with pytest.raises(PrepareError, match="garbage.wav"):
        _prepare("--input", str(tsv), "--output", str(tmp_path / "out"), "--num_workers", "2")


def test_shard_size_mb_cuts_shards_at_the_target_and_records_their_checksums(tmp_path):
    tsv = make_many_corpus(tmp_path / "corpus", 440)  # ~2.8 kB of FLAC per utterance: ~1.2 MB in all
    size_mb, target = "0.2", int(0.2 * 2**20)

    def run(out: str, *flags: str) -> dict:
        [report] = _prepare("--input", str(tsv), "--output", str(tmp_path / out), *flags)
        return report

    report = run("out", "--shard_size_mb", size_mb, "--num_workers", "1")
    split = tmp_path / "out" / "train"
    paths = [Path(p) for p in shards.list_shards(split)]
    sizes = [p.stat().st_size for p in paths]
    # Cut once a shard reaches the target, at a row-group boundary: at most one row group (~45 kB) and the footer over.
    assert all(target <= s < 1.3 * target for s in sizes[:-1]) and 0 < sizes[-1] < target  # the rest, in the last
    assert report["num_shards"] == len(paths) == sum(sizes) // target + 1 >= 4
    manifest = shards.read_manifest(split)
    for entry, path in zip(manifest["shards"], paths, strict=True):
        data = path.read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["index"] == path.name + shards.INDEX_SUFFIX
    ids = shards.read_metadata([str(p) for p in paths]).column("id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 440 == report["prepared"]
    assert not list(split.glob("shard-?????.parquet*"))  # every part got its final name

    # bit-identical whatever the worker count
    run("out2", "--shard_size_mb", size_mb, "--num_workers", "2")
    again = shards.read_manifest(tmp_path / "out2" / "train")
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]

    # a re-run keeps every shard; one lost is rebuilt alone; another target rebuilds all and drops the old files
    before = _shard_state(split)
    kept = run("out", "--shard_size_mb", size_mb, "--num_workers", "1")
    assert (kept["shards_reused"], kept["shards_built"]) == (len(paths), 0) and _shard_state(split) == before
    paths[-1].unlink()
    rebuilt = run("out", "--shard_size_mb", size_mb, "--num_workers", "1")
    assert (rebuilt["shards_reused"], rebuilt["shards_built"]) == (len(paths) - 1, 1)
    assert shards.read_manifest(split)["shards"] == manifest["shards"]
    bigger = run("out", "--shard_size_mb", "0.5", "--num_workers", "1")
    assert bigger["shards_reused"] == 0 and bigger["num_shards"] < len(paths)
    names = [shards.shard_name(k, bigger["num_shards"]) for k in range(bigger["num_shards"])]
    assert sorted(p.name for p in split.glob("shard-*")) == sorted(names + [n + shards.INDEX_SUFFIX for n in names])
    assert len(list((split / ".prepare").glob("*.json"))) == len(names)


def _prepare_peak_rss_mb(tsv: Path, out: Path) -> float:
    """Peak RSS of a prepare run in a fresh process (one decoding process: the pool's children are not counted).
    VmHWM, not getrusage's ru_maxrss: subprocess starts the child with vfork, and exec carries the parent's peak
    (this pytest process's, often the larger) into the child's ru_maxrss, which would make every run look alike."""
    code = (
        "import re, sys\n"
        "from pathlib import Path\n"
        "from xlsr_dist import prepare\n"
        "prepare.main(sys.argv[1:])\n"
        "status = Path('/proc/self/status').read_text()\n"
        "print('peak_kb', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    args = ["--input", str(tsv), "--output", str(out), "--num_workers", "1", "--no_progress"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("peak_kb ")]
    return int(line.split()[1]) / 1024


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path):
    # Ten times the utterances in one shard of the default size (~5 MB, then ~55 MB of FLAC): a writer that held
    # the shard's rows (and a table of them, and the file read back) would grow by ~3x the shard, here ~150 MB.
    peaks = {}
    for count in (2_000, 20_000):
        tsv = make_many_corpus(tmp_path / f"corpus{count}", count)
        peaks[count] = _prepare_peak_rss_mb(tsv, tmp_path / f"out{count}")
        assert shards.read_manifest(tmp_path / f"out{count}" / "train")["num_utterances"] == count
    assert peaks[20_000] < 1.2 * peaks[2_000], peaks


# The shards of the version before items moved to an on-disk table (prepare then held them as Python lists), for
# the corpus below: the same bytes now show the same items, order, cuts and conversion. A new libFLAC may change the
# bytes legitimately; then regenerate these from a version whose output is trusted.
_SHARDS_BEFORE_ITEM_STORE = {
    "--num_shards": [
        (13, "4aa109b8185fcf9ed00f59bc88238a5941d3f05af2ad2757d2e8ae697b7ddb1b"),
        (13, "173e2e7c06cf224b2b2a275ba57e4ce8d2e672e03ec4ea62d735d058530dcff5"),
        (14, "de51909530abafbeab0438994619fbd8ce85862b643206641f5a291ad5853aa3"),
    ],
    "--shard_size_mb": [
        (16, "d9ad48848a72124da40ab92a37f23587425ec6313190ea329571eaffeb003f22"),
        (16, "5389f93be3f64849d14b5da8af00819913654d1aef0a6edf23f41bab4740ab1b"),
        (8, "9c0edc89bba3bad43241280f6667a557a19c287387320dc7fe5c6ae9a66edbd7"),
    ],
}


# The Parquet footer names the writing library's version (created_by); the hashes above were recorded with this one.
_RECORDED_WRITER = b"parquet-cpp-arrow version 25.0.1"
_WRITER = re.compile(rb"parquet-cpp-arrow version [0-9]+\.[0-9]+\.[0-9]+")


def _sha256_as_written_by_recorded_pyarrow(path: Path) -> str:
    """The shard's sha256 had the recorded pyarrow written it: only the created_by string may differ between pyarrow
    releases (checked: a shard of pyarrow 26.0.1 with 25.0.1 in its footer has the recorded hash)."""
    data = path.read_bytes()
    [found] = _WRITER.findall(data)
    assert len(found) == len(_RECORDED_WRITER), f"writer version {found!r}: not comparable byte for byte"
    return hashlib.sha256(data.replace(found, _RECORDED_WRITER)).hexdigest()


def test_shards_are_those_of_the_in_memory_version(tmp_path):
    tsv = make_many_corpus(tmp_path / "corpus", 40)
    lines = tsv.read_text().splitlines()
    # a repeated id listed later with another transcript, and an exact repeat: both dropped, the first kept
    tsv.write_text("\n".join([*lines, lines[5].replace("\tff", "\tzz"), lines[1]]) + "\n")
    for flag, value in (("--num_shards", "3"), ("--shard_size_mb", "0.04")):
        out = tmp_path / flag.strip("-")
        [report] = _prepare("--input", str(tsv), "--output", str(out), "--num_workers", "1", flag, value)
        assert report["skipped_by_reason"] == {DUPLICATE_ID: 2}
        manifest = shards.read_manifest(out / "train")
        paths = shards.list_shards(out / "train")
        assert [s["sha256"] for s in manifest["shards"]] == [
            hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths
        ]
        recorded = [
            (s["rows"], _sha256_as_written_by_recorded_pyarrow(Path(p))) for s, p in zip(manifest["shards"], paths)
        ]
        assert recorded == _SHARDS_BEFORE_ITEM_STORE[flag]
        # a re-run keeps every shard: the plan hashes (items in order, settings) are those it wrote
        [again] = _prepare("--input", str(tsv), "--output", str(out), "--num_workers", "1", flag, value)
        assert again["shards_reused"] == len(manifest["shards"])
