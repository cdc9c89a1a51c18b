"""Weighted mixing of training sets (xlsr_dist/data/mixing.py, --train_data 'dirA=0.7,dirB=0.3'): pure, no
processes. An epoch of N utterances gives each set round(p_i N) of them (largest remainders: within 1/N of p_i),
drawn without replacement within the set, the same for the same (seed, epoch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from xlsr_dist.config import ConfigError, parse_args
from xlsr_dist.config.tree import parse_train_sets
from xlsr_dist.data.catalog import Catalog, PackedStrings, concatenate
from xlsr_dist.data.mixing import epoch_draw, set_counts, set_of, set_probabilities
from xlsr_dist.data.stream import set_names


def test_the_flag_syntax_keeps_urls_whole() -> None:
    assert parse_train_sets("s3://bucket/cv-de/train=0.7, hf://org/ds:train=0.3") == [
        ("s3://bucket/cv-de/train", 0.7),
        ("hf://org/ds:train", 0.3),
    ]
    assert parse_train_sets("/data/a,/data/b") == [("/data/a", None), ("/data/b", None)]
    assert parse_train_sets("/data/a") == [("/data/a", None)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a=0.7,b=0", "'b=0': weight 0 must be a number > 0"),
        ("a=0.7,b=-1", "'b=-1': weight -1 must be a number > 0"),
        ("a=0.7,b=heavy", "'b=heavy': the weight after '=' ('heavy') is not a number"),
        ("a=0.7,b", "give every set a weight"),
        ("a=1,a=2", "a set is named twice"),
    ],
)
def test_bad_weights_are_one_message_naming_the_flag(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(["--train_data", spec, "--eval_data", "x"])
    assert f"--train_data: {message}" in str(info.value)


def test_temperature_flattens_the_size_proportions() -> None:
    sizes = [9000, 900, 100]
    np.testing.assert_allclose(set_probabilities(sizes, [None] * 3, 1.0), [0.9, 0.09, 0.01])
    hot = set_probabilities(sizes, [None] * 3, 5.0)
    expected = np.array([0.9, 0.09, 0.01]) ** 0.2
    np.testing.assert_allclose(hot, expected / expected.sum())
    np.testing.assert_allclose(set_probabilities(sizes, [3.0, 1.0, 1.0], 5.0), [0.6, 0.2, 0.2])


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_an_epochs_proportions_match_the_weights_within_one_utterance(epoch: int) -> None:
    sizes = [1000, 137, 40]  # N = 1177
    p = set_probabilities(sizes, [0.5, 0.3, 0.2], 1.0)
    drawn = epoch_draw(sizes, p, seed=42, epoch=epoch)
    assert len(drawn) == sum(sizes), "an epoch is as long as all sets together"
    counts = np.bincount(set_of(drawn, sizes), minlength=3)
    np.testing.assert_array_equal(counts, set_counts(sizes, p))
    assert np.all(np.abs(counts / len(drawn) - p) <= 1 / len(drawn))
    # The large set gives 589 of its 1000 without repeats; the small sets repeat whole passes first.
    first = drawn[set_of(drawn, sizes) == 0]
    assert len(np.unique(first)) == len(first)
    small = drawn[set_of(drawn, sizes) == 2] - 1137
    assert np.bincount(small, minlength=40).min() >= counts[2] // 40
    assert np.bincount(small, minlength=40).max() <= counts[2] // 40 + 1
    np.testing.assert_array_equal(drawn, epoch_draw(sizes, p, seed=42, epoch=epoch))


def test_each_epoch_draws_other_utterances_of_a_down_weighted_set() -> None:
    sizes = [500, 500]
    p = set_probabilities(sizes, [0.9, 0.1], 1.0)
    epochs = [
        set(epoch_draw(sizes, p, seed=1, epoch=e)[set_of(epoch_draw(sizes, p, 1, e), sizes) == 1]) for e in (0, 1)
    ]
    assert len(epochs[0]) == len(epochs[1]) == 100
    assert epochs[0] != epochs[1]


def _catalog(ids: list[str], labels: list[list[int]], shard_paths: list[str]) -> Catalog:
    packed = PackedStrings.from_arrow(pa.array(ids))
    flat = np.array([x for lab in labels for x in lab], dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(lab) for lab in labels])]).astype(np.int64)
    n = len(ids)
    return Catalog(
        ids=packed,
        durations=np.arange(1, n + 1, dtype=np.float64),
        shard=np.arange(n, dtype=np.int32) % len(shard_paths),
        row=np.arange(n, dtype=np.int32),
        label_flat=flat,
        label_offsets=offsets,
        blob_offset=np.full(n, -1, dtype=np.int64),
        blob_length=np.full(n, -1, dtype=np.int64),
        shard_paths=shard_paths,
        shard_digests=[""] * len(shard_paths),
        report=[{"id": "x", "reason": "duplicate id"}],
    )


def test_concatenated_catalogs_keep_each_utterance_with_its_shard_and_labels() -> None:
    a = _catalog(["a0", "a1", "a2"], [[1], [2, 3], [4]], ["A/s0", "A/s1"])
    b = _catalog(["b0", "b1"], [[5, 6, 7], [8]], ["B/s0"])
    both = concatenate([a.head(2), b])  # a slice first: offsets that do not start at 0 elsewhere
    assert list(both.ids) == ["a0", "a1", "b0", "b1"]
    assert [both.labels(i) for i in range(4)] == [[1], [2, 3], [5, 6, 7], [8]]
    assert [both.shard_paths[s] for s in both.shard] == ["A/s0", "A/s1", "B/s0", "B/s0"]
    assert both.durations.tolist() == [1.0, 2.0, 1.0, 2.0]
    assert len(both.report) == 2


def test_a_config_file_may_list_the_sets_and_the_speed_factors(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "train_data:\n  - s3://b/cv/train=0.7\n  - /data/y=0.3\nspeed_factors: [0.9, 1.1]\neval_data: e\n"
    )
    cfg = parse_args(["--config", str(config)])
    assert cfg.data.train_sets() == [("s3://b/cv/train", 0.7), ("/data/y", 0.3)]
    assert cfg.data.speed_factors == "0.9,1.1"


def test_set_names_are_short_and_distinct() -> None:
    assert set_names(["/data/cv-en/train", "s3://b/libri/train-clean"]) == ["cv-en/train", "libri/train-clean"]
    assert set_names(["/a/cv/train", "/b/cv/train"]) == ["cv/train-0", "cv/train-1"]
    assert set_names(["hf://org/ds:train"]) == ["org/ds_train"]
