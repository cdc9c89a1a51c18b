"""TrainStream / EvalStream over real shards on fake worlds (one stream per rank, no processes)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xlsr_dist.audio import encode_flac
from xlsr_dist.config import DataConfig, plan_batches
from xlsr_dist.data import shards
from xlsr_dist.data.skip_reasons import DUPLICATE_ID, EMPTY_TRANSCRIPT, LONGER_THAN_MAX, UNALIGNABLE
from xlsr_dist.data.stream import DataState, DataStateError, EvalStream, TrainStream, prefetched
from xlsr_dist.text import build_vocab
from xlsr_dist.world import World

N_UTTERANCES = 70  # 8 steps of 8, remainder 6
WORDS = ["a", "cat", "sat", "on", "the", "mat", "dog", "ran"]


def frames(num_samples: int) -> int:
    return num_samples // 320  # wav2vec2's 20 ms frames


def _rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = round(float(rng.uniform(0.3, 1.2)), 2)
        samples = int(round(seconds * 16000))
        t = np.arange(samples) / 16000
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(samples)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        rows.append(
            {
                "id": f"utt{i:04d}",
                "audio": encode_flac(wave.astype(np.float32)),
                "text": text,
                "duration": samples / 16000,
                "source": f"synthetic/{i}",
            }
        )
    return rows


def _write(root: Path, rows: list[dict[str, Any]], num_shards: int, row_group_size: int = 4) -> str:
    root.mkdir(parents=True, exist_ok=True)
    # Round-robin over shards: shard order differs from id order, as after a real prepare.
    for s in range(num_shards):
        shards.write_shard(root / shards.shard_name(s, num_shards), rows[s::num_shards], row_group_size)
    return str(root)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return _rows(N_UTTERANCES)


@pytest.fixture(scope="module")
def vocab(rows: list[dict[str, Any]]) -> dict[str, int]:
    return build_vocab(r["text"] for r in rows)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> dict[int, str]:
    base = tmp_path_factory.mktemp("corpora")
    return {k: _write(base / f"s{k}", rows, k) for k in (1, 3, 4, 5, 8)}


def cfg(**kw: Any) -> DataConfig:
    base = {"bucket_size_multiplier": 2, "dataloader_num_workers": 0}
    base.update(kw)
    return DataConfig(**base)


def rank_streams(location: str, world_size: int, vocab: dict[str, int], seed: int = 11, **kw: Any) -> list[TrainStream]:
    plan = plan_batches(8, world_size)
    return [
        TrainStream(location, World(rank=r, world_size=world_size), plan, seed, vocab, cfg(**kw), frames)
        for r in range(world_size)
    ]


def take(stream: TrainStream, state: DataState, n: int) -> list[tuple[DataState, list[dict[str, Any]]]]:
    gen = stream.steps(state)
    try:
        return list(itertools.islice(gen, n))
    finally:
        gen.close()


def step_unions(streams: list[TrainStream], state: DataState, n: int) -> tuple[list[Counter[str]], DataState]:
    """Per step, the multiset of valid utterance ids over all ranks and micro-batches; and the final state."""
    per_rank = [take(s, state, n) for s in streams]
    assert len({len(r) for r in per_rank}) == 1, "ranks yielded different numbers of steps"
    unions = []
    for k in range(n):
        states = {r[k][0] for r in per_rank}
        assert len(states) == 1, "ranks disagree on the data state"
        c: Counter[str] = Counter()
        for r in per_rank:
            for b in r[k][1]:
                c.update(i for i, v in zip(b["ids"], b["valid"].tolist()) if v)
        unions.append(c)
    return unions, per_rank[0][-1][0]


@pytest.mark.parametrize("num_shards", [1, 3, 4, 5, 8])
def test_step_k_has_the_same_utterances_for_any_world_size_and_sharding(
    corpora: dict[int, str], vocab: dict[str, int], num_shards: int
) -> None:
    reference = rank_streams(corpora[1], 1, vocab)[0]
    spe = reference.steps_per_epoch
    assert spe == N_UTTERANCES // 8
    expected = [Counter(reference.global_batch_ids(0, k)) for k in range(spe)]
    for world in (1, 2, 4, 8):
        streams = rank_streams(corpora[num_shards], world, vocab)
        assert {s.steps_per_epoch for s in streams} == {spe}
        plan = streams[0].plan
        per_rank = [take(s, s.initial_state(), spe) for s in streams]
        for r in per_rank:
            assert len(r) == spe
            for _, micro in r:
                assert len(micro) == plan.grad_accum
                for b in micro:
                    assert b["input_values"].shape[0] == plan.micro_batch == b["labels"].shape[0]
                    assert b["valid"].all()
        unions, _ = step_unions(streams, streams[0].initial_state(), spe)
        assert unions == expected, f"world {world}, {num_shards} shards"
        seen = Counter(i for u in unions for i in u.elements())
        assert max(seen.values()) == 1 and len(seen) == N_UTTERANCES - N_UTTERANCES % 8


def test_resume_continues_with_the_same_utterances_on_another_world_size(
    corpora: dict[int, str], vocab: dict[str, int]
) -> None:
    old = rank_streams(corpora[3], 2, vocab)
    spe = old[0].steps_per_epoch
    # The uninterrupted run: 3 steps, then 7 more that cross into epoch 1.
    full, _ = step_unions(old, old[0].initial_state(), 10)
    _, saved = step_unions(old, old[0].initial_state(), 3)
    assert (saved.epoch, saved.step_in_epoch) == (0, 3)
    restored = DataState.from_dict(saved.to_dict())
    for new_world, location in ((4, corpora[5]), (2, corpora[3]), (1, corpora[1])):
        new = rank_streams(location, new_world, vocab)
        after, final = step_unions(new, restored, 7)
        assert after == full[3:10], f"2 -> {new_world} ranks"
        assert (final.epoch, final.step_in_epoch) == (1, 10 - spe)
    # 4 -> 1, resumed from a state inside epoch 1.
    four = rank_streams(corpora[4], 4, vocab)
    whole, _ = step_unions(four, four[0].initial_state(), spe + 4)
    _, mid = step_unions(four, four[0].initial_state(), spe + 1)
    one = rank_streams(corpora[8], 1, vocab)
    resumed, _ = step_unions(one, DataState.from_dict(mid.to_dict()), 3)
    assert resumed == whole[spe + 1 : spe + 4]


def test_state_from_another_seed_batch_or_corpus_is_refused(corpora: dict[int, str], vocab: dict[str, int]) -> None:
    stream = rank_streams(corpora[1], 1, vocab)[0]
    state = stream.initial_state()
    with pytest.raises(DataStateError, match="--seed 11"):
        next(rank_streams(corpora[1], 2, vocab, seed=12)[0].steps(state))
    with pytest.raises(DataStateError, match="--global_batch_size 16"):
        next(stream.steps(DataState(**{**state.to_dict(), "global_batch": 16})))
    refiltered = rank_streams(corpora[1], 1, vocab, max_duration_in_seconds=0.9)[0]
    with pytest.raises(DataStateError, match="differ"):
        next(refiltered.steps(state))
    with pytest.raises(DataStateError, match="lacks"):
        DataState.from_dict({"epoch": 1})
    # A different world size is the elastic case: accepted.
    next(rank_streams(corpora[1], 4, vocab)[2].steps(state))


def test_workers_give_the_same_batches_as_the_main_process(corpora: dict[int, str], vocab: dict[str, int]) -> None:
    plan = plan_batches(8, 2)
    world = World(rank=1, world_size=2)
    a = TrainStream(corpora[3], world, plan, 5, vocab, cfg(dataloader_num_workers=0), frames)
    b = TrainStream(corpora[3], world, plan, 5, vocab, cfg(dataloader_num_workers=2), frames)
    n = a.steps_per_epoch + 2  # across an epoch boundary (a new DataLoader)
    for (sa, ma), (sb, mb) in zip(take(a, a.initial_state(), n), take(b, b.initial_state(), n), strict=True):
        assert sa == sb
        for x, y in zip(ma, mb, strict=True):
            assert x["ids"] == y["ids"]
            assert torch.equal(x["input_values"], y["input_values"]) and torch.equal(x["labels"], y["labels"])


def test_prefetched_keeps_the_order_raises_the_producers_error_and_stops_its_thread_when_closed() -> None:
    def thread_alive() -> bool:
        return any(t.name == "xlsr_dist-prefetch" and t.is_alive() for t in threading.enumerate())

    def failing() -> Any:
        yield {"n": 0}
        raise OSError("shard gone")

    assert [b["n"] for b in prefetched(iter([{"n": i} for i in range(7)]), depth=2)] == list(range(7))
    it = prefetched(failing(), depth=2)
    assert next(it) == {"n": 0}
    with pytest.raises(OSError, match="shard gone"):
        next(it)
    # A consumer that stops early (the run ends mid-epoch) leaves no producer blocked behind it.
    endless = prefetched(({"n": i} for i in itertools.count()), depth=2)
    assert next(endless) == {"n": 0} and thread_alive()
    endless.close()
    deadline = time.monotonic() + 5
    while thread_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thread_alive()


def test_each_rank_reads_only_its_own_rows(tmp_path: Path, rows: list[dict[str, Any]], vocab: dict[str, int]) -> None:
    location = _write(tmp_path / "c", rows, 3)
    for rank in range(4):
        stream = rank_streams(location, 4, vocab)[rank]
        before = dict(shards.IO_STATS)
        got = take(stream, stream.initial_state(), stream.steps_per_epoch)
        consumed = sum(len(b["ids"]) for _, micro in got for b in micro)
        assert consumed == stream.steps_per_epoch * 2
        # through the shards' byte index: exactly the audio of the rows this rank trains on, no row group
        assert shards.IO_STATS["blobs_read"] - before["blobs_read"] == consumed
        assert shards.IO_STATS["row_groups_read"] == before["row_groups_read"]


def test_unusable_utterances_are_skipped_and_reported(
    tmp_path: Path, rows: list[dict[str, Any]], vocab: dict[str, int]
) -> None:
    bad = [dict(r) for r in rows[:20]]
    bad[0]["text"] = "the cat sat on the mat " * 20  # ~460 labels for < 60 frames
    bad[1]["duration"] = 25.0  # metadata says too long
    bad[2]["text"] = "!!"  # normalises to nothing
    bad.append(dict(rows[3]))  # the same id twice
    stream = rank_streams(_write(tmp_path / "c", bad, 2), 1, vocab, max_duration_in_seconds=20.0)[0]
    reasons = {r["id"]: r["reason"] for r in stream.report}
    assert reasons == {
        "utt0000": UNALIGNABLE,
        "utt0001": LONGER_THAN_MAX,
        "utt0002": EMPTY_TRANSCRIPT,
        "utt0003": DUPLICATE_ID,
    }
    assert stream.num_samples == 17
    assert stream.skipped == {UNALIGNABLE: 1, LONGER_THAN_MAX: 1, EMPTY_TRANSCRIPT: 1, DUPLICATE_ID: 1}
    assert "skipped 4" in stream.describe()
    ids = {i for _, micro in take(stream, stream.initial_state(), 2) for b in micro for i in b["ids"]}
    assert not ids & {"utt0000", "utt0001", "utt0002"}


def test_corrupt_audio_is_dropped_with_a_warning_and_ranks_keep_step(
    tmp_path: Path, rows: list[dict[str, Any]], vocab: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    damaged = [dict(r) for r in rows[:16]]
    damaged[5]["audio"] = b"RIFF not really audio"
    location = _write(tmp_path / "c", damaged, 2)
    streams = rank_streams(location, 8, vocab)  # micro-batch 1: the damaged item's rank has nothing left
    with caplog.at_level(logging.WARNING):
        per_rank = [take(s, s.initial_state(), 2) for s in streams]
    assert any("utt0005" in rec.getMessage() for rec in caplog.records)
    batches = [b for r in per_rank for _, micro in r for b in micro]
    assert len(batches) == 16  # every rank ran both steps
    dummy = [b for b in batches if not b["valid"].any()]
    assert len(dummy) == 1 and (dummy[0]["labels"] == -100).all() and dummy[0]["input_values"].shape == (1, 16000)
    valid_ids = [i for b in batches for i, v in zip(b["ids"], b["valid"].tolist()) if v]
    assert sorted(valid_ids) == sorted(r["id"] for r in damaged if r["id"] != "utt0005")


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_stream_sees_every_utterance_once_with_equal_batch_counts(
    corpora: dict[int, str], vocab: dict[str, int], world: int
) -> None:
    streams = [EvalStream(corpora[5], World(rank=r, world_size=world), 4, vocab, cfg(), frames) for r in range(world)]
    batches = [list(s) for s in streams]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(streams[0])
    valid = [i for rb in batches for b in rb for i, v in zip(b["ids"], b["valid"].tolist()) if v]
    assert sorted(valid) == [f"utt{i:04d}" for i in range(N_UTTERANCES)]
    assert streams[0].num_samples == N_UTTERANCES
    capped = EvalStream(corpora[5], World(), 4, vocab, cfg(), frames, max_utterances=10)
    assert capped.num_samples == 10 and sum(len(b["ids"]) for b in capped) == 10


def test_transcripts_taken_as_already_normalised_are_fixed_points_of_normalize() -> None:
    from xlsr_dist import text
    from xlsr_dist.data.catalog import _ALREADY_NORMAL

    rng = np.random.default_rng(0)
    alphabet = list("ab'  Z1é-") + ["’"]
    accepted = 0
    for _ in range(20000):
        t = "".join(rng.choice(alphabet, size=int(rng.integers(0, 9))))
        if _ALREADY_NORMAL.fullmatch(t):
            accepted += 1
            assert text.normalize(t) == t, t  # skipping normalize changes nothing
    assert accepted > 100
    assert _ALREADY_NORMAL.fullmatch("don't stop") and not _ALREADY_NORMAL.fullmatch("'quoted'")
