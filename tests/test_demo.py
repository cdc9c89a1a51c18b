"""data/demo.py: the self-generated demo corpus is deterministic, well-formed, and safe to create concurrently."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xlsr_dist import text
from xlsr_dist.audio import SAMPLE_RATE, decode_bytes
from xlsr_dist.data import demo, shards

REPO = Path(__file__).resolve().parent.parent


def rows_of(split_dir: Path) -> list[dict]:
    out: list[dict] = []
    for path in shards.list_shards(split_dir):
        n = shards.read_metadata([path]).num_rows
        out.extend(shards.read_rows(path, range(n)))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return demo.ensure_demo_corpus(tmp_path_factory.mktemp("demo"), seed=7, n_train=40, n_eval=12)


def test_same_seed_gives_identical_corpus_and_another_seed_a_different_one(tmp_path: Path, corpus) -> None:
    again = demo.ensure_demo_corpus(tmp_path / "a", seed=7, n_train=40, n_eval=12)
    other = demo.ensure_demo_corpus(tmp_path / "b", seed=8, n_train=40, n_eval=12)
    for split in (0, 1):
        first, second, third = rows_of(corpus[split]), rows_of(again[split]), rows_of(other[split])
        assert [(r["id"], r["text"], r["audio"]) for r in first] == [(r["id"], r["text"], r["audio"]) for r in second]
        assert [r["audio"] for r in first] != [r["audio"] for r in third]
        assert [r["text"] for r in first] != [r["text"] for r in third]
    assert (corpus[0] / "shard-00000-of-00001.parquet").read_bytes() == (
        again[0] / "shard-00000-of-00001.parquet"
    ).read_bytes()


def test_an_utterance_depends_only_on_seed_split_and_index() -> None:
    # Lets every rank or worker regenerate any row without generating those before it.
    voices = demo.speakers(3, "train")
    late = demo.utterance(3, "train", 5, voices)
    for i in range(5):
        demo.utterance(3, "train", i, voices)
    assert demo.utterance(3, "train", 5, voices) == late


def test_splits_are_disjoint_and_eval_speakers_are_held_out(corpus) -> None:
    train, evals = rows_of(corpus[0]), rows_of(corpus[1])
    assert len(train) == 40 and len(evals) == 12
    train_ids, eval_ids = {r["id"] for r in train}, {r["id"] for r in evals}
    assert len(train_ids) == 40 and len(eval_ids) == 12 and not train_ids & eval_ids
    assert not set(demo.speakers(7, "train")) & set(demo.speakers(7, "eval"))
    assert len(demo.speakers(7, "eval")) == demo.EVAL_SPEAKERS


def test_audio_is_16k_mono_speech_of_the_declared_duration(corpus) -> None:
    for row in rows_of(corpus[0])[:20]:
        wave = decode_bytes(row["audio"])
        assert wave.ndim == 1 and wave.dtype == np.float32
        assert row["duration"] == pytest.approx(wave.shape[0] / SAMPLE_RATE, abs=1e-6)
        assert 0.1 <= row["duration"] <= 4.0
        assert 0.1 < np.abs(wave).max() <= 1.0
        # The background noise fades in and out: no step in the noise floor against a batch's zero padding.
        assert np.abs(wave[:8]).max() < 0.01 and np.abs(wave[-8:]).max() < 0.01
        # Letters are louder than the background noise between words.
        frames = wave[: wave.shape[0] // 160 * 160].reshape(-1, 160)
        energy = (frames**2).mean(axis=1)
        assert np.percentile(energy, 90) > 10 * np.percentile(energy, 10)


def test_transcripts_are_normalised_words_from_the_word_list(corpus) -> None:
    words = set(demo.WORDS)
    for row in rows_of(corpus[0]) + rows_of(corpus[1]):
        assert text.normalize(row["text"]) == row["text"]
        tokens = row["text"].split(" ")
        assert demo.MIN_WORDS <= len(tokens) <= demo.MAX_WORDS
        assert set(tokens) <= words
    # The full corpus's vocabulary is the whole alphabet, so eval never meets a character the head lacks.
    assert set("".join(demo.WORDS)) == set(string.ascii_lowercase)


def test_manifests_describe_the_splits(corpus) -> None:
    for split_dir, count in zip(corpus, (40, 12)):
        manifest = shards.read_manifest(split_dir)
        assert manifest["num_utterances"] == count
        assert set(manifest["vocabulary"]) <= set(string.ascii_lowercase + " ")


def test_existing_corpus_is_reused_not_regenerated(tmp_path: Path) -> None:
    train_dir, _ = demo.ensure_demo_corpus(tmp_path, seed=1, n_train=16, n_eval=2)
    shard = train_dir / "shard-00000-of-00001.parquet"
    stamp = shard.stat().st_mtime_ns
    assert demo.ensure_demo_corpus(tmp_path, seed=1, n_train=16, n_eval=2)[0] == train_dir
    assert shard.stat().st_mtime_ns == stamp
    # Other parameters name another corpus directory.
    assert demo.ensure_demo_corpus(tmp_path, seed=1, n_train=17, n_eval=2)[0] != train_dir


def test_concurrent_generation_from_two_processes_gives_one_valid_corpus(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "xlsr_dist.data.demo",
        "--out",
        str(tmp_path),
        "--seed",
        "5",
        "--n_train",
        "300",
        "--n_eval",
        "10",
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert outputs[0][0] == outputs[1][0]  # both name the same split directories
    corpora = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(corpora) == 1, f"left behind: {sorted(p.name for p in tmp_path.iterdir())}"
    train_dir = corpora[0] / "train"
    assert f"train: {train_dir}" in outputs[0][0]
    assert len(shards.list_shards(train_dir)) == 2
    train = rows_of(train_dir)
    assert len(train) == 300 and len({r["id"] for r in train}) == 300
    assert shards.read_manifest(train_dir)["num_utterances"] == 300


def test_demo_launch_config_is_valid_and_trains_the_whole_tiny_model() -> None:
    from xlsr_dist.config import REFERENCE_GLOBAL_BATCH, parse_args

    cfg = parse_args(["--config", str(REPO / "launch" / "demo.yaml")])  # unknown keys would raise ConfigError
    assert cfg.model.architecture == "tiny" and cfg.data.train_data == "demo"
    # A randomly initialised front end frozen would never learn to hear anything.
    assert cfg.model.freeze_feature_encoder is False
    assert cfg.train.global_batch_size == REFERENCE_GLOBAL_BATCH
    assert cfg.train.deepspeed.endswith("zero2_fp32.json")
