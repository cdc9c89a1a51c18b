"""Shards on S3, over HTTP: prepare writes a corpus to ``s3://`` and two real ranks train from it, checkpoint, and
resume, all through s3fs against moto's S3 server (tests/_s3_server.py) reached by the standard AWS variables.

What crosses the network is checked from the server's own record of the requests: every read of a shard is a ranged
GET of part of it (no rank downloads whole shards to reach its rows), and the secret access key reaches no rank's
console, no file of the run, and no MLflow param or tag.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests._dist import ROOT, base_env, run_module, run_ranks
from tests._resume import Reference, stopped_copy
from tests._runs import DATA_CACHE, metrics_by_step, mlflow_runs, tiny_flags
from tests._s3_server import S3Server
from tests._secrets import files_holding

CANARY = "s3-secret-canary-Zq81"
BUCKET = "corpora"
STEPS, SAVE_AT = 4, 2


def write_folder_corpus(root: Path) -> dict[str, list[str]]:
    """The tests' demo utterances as a folder-layout corpus (FLAC files plus train.tsv and eval.tsv); ids by split."""
    from xlsr_dist.data import shards
    from xlsr_dist.data.demo import ensure_demo_corpus

    ids: dict[str, list[str]] = {}
    for split, split_dir in zip(("train", "eval"), ensure_demo_corpus(DATA_CACHE, 42, 96, 16)):
        lines = []
        for shard in shards.list_shards(split_dir):
            meta = shards.read_metadata([shard])
            for row in shards.read_rows(shard, range(meta.num_rows)):
                name = f"{split}/{row['id'].replace('/', '_')}.flac"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(row["audio"])
                lines.append(f"{name}\t{row['text']}\n")
        (root / f"{split}.tsv").write_text("path\tsentence\n" + "".join(lines))
        ids[split] = sorted(line.split("\t")[0] for line in lines)
    return ids


def object_key(request: dict[str, Any]) -> str:
    return request["url"].split("?")[0].split(f"/{BUCKET}/", 1)[-1]


def shard_reads(requests: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(key, first byte, last byte) of every GET of a shard file; a GET without a Range header reads 0..-1."""
    reads = []
    for r in requests:
        key = object_key(r)
        if r["method"] != "GET" or not key.endswith(".parquet"):
            continue
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", r["headers"].get("Range", ""))
        reads.append((key, int(match.group(1)), int(match.group(2))) if match else (key, 0, -1))
    return reads


def train(out: Path, db: Path, logs: Path, env: dict[str, str], **flags: Any) -> str:
    results = run_ranks(
        [
            "-m",
            "xlsr_dist.train",
            *tiny_flags(
                out,
                f"sqlite:///{db}",
                train_data=f"s3://{BUCKET}/cv/train",
                eval_data=f"s3://{BUCKET}/cv/eval",
                max_steps=STEPS,
                save_steps=SAVE_AT,
                eval_steps=STEPS,
                **flags,
            ),
        ],
        world_size=2,
        timeout=300,
        env=env,
        log_dir=logs,
    )
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} failed:\n" + "\n".join(r.output.splitlines()[-40:])
        assert CANARY not in r.output, f"rank {r.rank} printed the secret access key"
    return "\n".join(r.output for r in results)


@pytest.mark.slow
def test_prepare_into_s3_then_train_two_ranks_and_resume_from_it(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    from xlsr_dist.data import shards

    for name, value in s3_server.env(CANARY).items():
        monkeypatch.setenv(name, value)
    env = base_env(**s3_server.env(CANARY))
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    s3.mkdir(BUCKET)
    ids = write_folder_corpus(tmp_path / "corpus")

    prep = run_module(
        [
            "xlsr_dist.prepare",
            "--layout",
            "folder",
            "--input",
            str(tmp_path / "corpus"),
            "--split",
            "train",
            "eval",
            "--output",
            f"s3://{BUCKET}/cv",
            "--num_shards",
            "3",
            "--num_workers",
            "1",
            "--no_progress",
        ],
        timeout=120,
        env=env,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "train: prepared 96 utterances" in prep.stdout and f"-> s3://{BUCKET}/cv/train" in prep.stdout
    assert CANARY not in prep.stdout + prep.stderr
    # Each object appears whole (one PUT); a split's manifest is written after all of its shards and indexes.
    puts = [object_key(r) for r in s3_server.requests() if r["method"] == "PUT" and "/" in object_key(r)]
    for split in ("train", "eval"):
        in_split = [i for i, key in enumerate(puts) if key.startswith(f"cv/{split}/shard-")]
        assert len(in_split) == 6 and max(in_split) < puts.index(f"cv/{split}/manifest.json"), puts

    # Listing over HTTP: each split is its shards, their byte indexes, report and manifest, and nothing else.
    shard_names = [f"shard-{i:05d}-of-00003.parquet" for i in range(3)]
    expected = sorted([*shard_names, *(n + ".idx" for n in shard_names), "manifest.json", "report.json"])
    for split in ("train", "eval"):
        assert sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{BUCKET}/cv/{split}")) == expected
    train_shards = shards.list_shards(f"s3://{BUCKET}/cv/train")
    assert train_shards == [f"s3://{BUCKET}/cv/train/{n}" for n in shard_names]
    assert sorted(shards.read_metadata(train_shards).column("id").to_pylist()) == ids["train"]
    manifest = shards.read_manifest(f"s3://{BUCKET}/cv/train")
    assert manifest["num_utterances"] == 96 and all(s["index"] for s in manifest["shards"])
    shard_bytes = {f"cv/train/{s['name']}": s["bytes"] for s in manifest["shards"]}
    shard_bytes |= {
        f"cv/eval/{s['name']}": s["bytes"] for s in shards.read_manifest(f"s3://{BUCKET}/cv/eval")["shards"]
    }

    # Train 4 steps from S3 with a checkpoint at step 2.
    s3_server.reset_recording()
    full = tmp_path / "full"
    train(full, tmp_path / "full.db", tmp_path / "logs_full", env)
    losses = metrics_by_step(full, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert metrics_by_step(full, "eval_wer")

    # Ranged reads: every GET of a shard asks for a small part of it, never what a read-ahead cache would fetch: at
    # most Parquet's footer read (pyarrow reads a file's last 64 KiB) or one row's FLAC blob (the byte index gives
    # its offset and length). 32 of the 96 training utterances are read, so the ranks together fetch less than the
    # shards hold, eval and footers included.
    largest_blob = max(max(json.loads(s3.cat_file(f"{BUCKET}/{key}.idx"))["lengths"]) for key in shard_bytes)
    reads = shard_reads(s3_server.requests())
    assert reads, "the record holds no shard reads: the training did not read through the server"
    assert {key for key, _, _ in reads} == set(shard_bytes), "every shard is read, each only in part"
    large = [
        (key, first, last)
        for key, first, last in reads
        if last < 0 or last - first + 1 > max(64 << 10, largest_blob + 4)
    ]
    assert large == [], f"GETs larger than a footer read or one row's audio: {large[:5]}"
    fetched = sum(last - first + 1 for _, first, last in reads)
    print(f"{len(reads)} ranged GETs of shards, {fetched} bytes of {sum(shard_bytes.values())}")
    assert fetched < sum(shard_bytes.values())

    # Resume: the run as it was right after the step-2 checkpoint continues to step 4 with the same losses.
    resumed, db = stopped_copy(Reference(full, tmp_path / "full.db", losses), tmp_path / "resumed", SAVE_AT)
    output = train(resumed, db, tmp_path / "logs_resumed", env, resume_from_checkpoint="latest")
    assert "resumed from" in output and f"at step {SAVE_AT}" in output
    resumed_losses = metrics_by_step(resumed, "loss")
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(losses[step], rel=1e-5, abs=1e-6), step

    # The secret access key reached no file of either run and no MLflow param or tag.
    for out in (full, resumed):
        assert json.loads((out / "train_config.json").read_text())["train_data"] == f"s3://{BUCKET}/cv/train"
        assert (out / "run_info.json").is_file()
        assert files_holding(out, CANARY) == []
    [run] = mlflow_runs(f"sqlite:///{db}")
    assert run.data.params["train_data"] == f"s3://{BUCKET}/cv/train"
    assert [k for k, v in {**run.data.params, **run.data.tags}.items() if CANARY in k or CANARY in v] == []
    assert files_holding(tmp_path, CANARY) == []


def test_prepare_to_a_url_writes_each_split_there_and_a_rerun_drops_the_shards_of_another_plan(tmp_path: Path) -> None:
    import fsspec

    from xlsr_dist.data import shards
    from xlsr_dist.prepare import run

    ids = write_folder_corpus(tmp_path / "corpus")
    url = f"memory://prepare-{tmp_path.name}/cv"
    store = fsspec.filesystem("memory")
    for num_shards in (3, 2):
        flags = ["--layout", "folder", "--input", str(tmp_path / "corpus"), "--split", "eval", "--output", url]
        [report] = run([*flags, "--num_shards", str(num_shards), "--num_workers", "1", "--no_progress"])
        assert report["prepared"] == 16
        names = [f"shard-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]
        listed = sorted(p.rsplit("/", 1)[-1] for p in store.ls(f"{url}/eval", detail=False))
        assert listed == sorted([*names, *(n + ".idx" for n in names), "manifest.json", "report.json"])
        assert shards.read_manifest(f"{url}/eval")["num_shards"] == num_shards
        paths = shards.list_shards(f"{url}/eval")
        assert sorted(shards.read_metadata(paths).column("id").to_pylist()) == ids["eval"]
    assert not (ROOT / "memory:").exists() and not Path("memory:").exists()
