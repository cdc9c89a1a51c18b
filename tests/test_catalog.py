"""The compact catalog against the per-utterance loop it replaced: same utterances, labels, report, plan, digest."""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from xlsr_dist import text
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.data.catalog import PackedStrings, filter_metadata
from xlsr_dist.data.partition import epoch_batches
from xlsr_dist.data.skip_reasons import (
    DUPLICATE_ID,
    EMPTY_TRANSCRIPT,
    LONGER_THAN_MAX,
    SHORTER_THAN_MIN,
    UNALIGNABLE,
)
from xlsr_dist.model import output_frames

WAV2VEC2 = types.SimpleNamespace(conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])


def wav2vec2_frames(num_samples: int) -> int:
    return output_frames(WAV2VEC2, num_samples)  # type: ignore[arg-type]


def reference_catalog(
    meta: pa.Table,
    vocab: dict[str, int],
    min_seconds: float,
    max_seconds: float,
    frames_fn: Callable[[int], int],
    normalization: text.TextNormalization,
) -> tuple[list[str], np.ndarray, list[int], list[int], list[list[int]], list[dict[str, str]], str]:
    """The stream's filter as every earlier version wrote it, one utterance at a time (ids, durations, shard, row,
    labels, report, fingerprint)."""
    rows = sorted(meta.to_pylist(), key=lambda r: (r["id"], r["shard"], r["row"]))
    kept: list[dict] = []
    labels: list[list[int]] = []
    report: list[dict[str, str]] = []
    previous = None
    for r in rows:
        reason = ""
        if r["id"] == previous:
            reason = DUPLICATE_ID
        elif r["duration"] < min_seconds:
            reason = SHORTER_THAN_MIN
        elif r["duration"] > max_seconds:
            reason = LONGER_THAN_MAX
        else:
            normalised = text.normalize(r["text"] or "", normalization)
            if not normalised:
                reason = EMPTY_TRANSCRIPT
            else:
                lab = text.encode(normalised, vocab)
                if text.ctc_min_frames(lab) > frames_fn(int(round(r["duration"] * SAMPLE_RATE))):
                    reason = UNALIGNABLE
        previous = r["id"]
        if reason:
            report.append({"id": r["id"], "reason": reason})
        else:
            kept.append(r)
            labels.append(lab)
    ids = [r["id"] for r in kept]
    durations = np.asarray([r["duration"] for r in kept], dtype=np.float64)
    digest = hashlib.sha256("\0".join(ids).encode("utf-8"))
    digest.update(durations.astype("<f8").tobytes())
    return (
        ids,
        durations,
        [r["shard"] for r in kept],
        [r["row"] for r in kept],
        labels,
        report,
        digest.hexdigest(),
    )


def awkward_metadata(n: int, seed: int) -> pa.Table:
    """Metadata with every skip reason, transcripts prepare would not write (upper case, digits, accents, other
    scripts, nulls), ids out of order across shards and duplicated."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "don't", "zoo", "aa", "ll"]
    odd = ["Hello World", "Café 42", "", None, "  ", "привет мир", "naïve—zoë’s", "'quoted'", "x", "a  b", "ü ß"]
    ids, texts, durations = [], [], []
    for i in range(n):
        ids.append(f"u{int(rng.integers(0, n)):06d}" if rng.random() < 0.05 else f"u{i:06d}")
        texts.append(
            odd[int(rng.integers(len(odd)))]
            if rng.random() < 0.15
            else " ".join(rng.choice(words, size=int(rng.integers(1, 12))))
        )
        durations.append(float(rng.choice([0.05, 0.3, 0.5, 1.0, 2.5, 40.0])) + round(float(rng.random()), 4))
    shard = rng.integers(0, 4, n).astype(np.int32)
    return pa.table(
        {
            "id": ids,
            "duration": durations,
            "text": pa.array(texts, pa.string()),
            "shard": shard,
            "row": np.arange(n, dtype=np.int32),
        }
    )


@pytest.mark.parametrize(
    "normalization",
    [text.ENGLISH, text.TextNormalization("en", chars_to_ignore="x"), text.TextNormalization("ru")],
    ids=["english", "chars_to_ignore", "russian"],
)
def test_compact_catalog_is_the_per_utterance_one(normalization: text.TextNormalization) -> None:
    meta = awkward_metadata(3000, seed=1)
    vocab = text.build_vocab(text.normalize(t or "", normalization) for t in meta.column("text").to_pylist()[:2500])
    ids, durations, shard, row, labels, report, fingerprint = reference_catalog(
        meta, vocab, 0.2, 30.0, wav2vec2_frames, normalization
    )
    assert {r["reason"] for r in report} == {
        DUPLICATE_ID,
        SHORTER_THAN_MIN,
        LONGER_THAN_MAX,
        EMPTY_TRANSCRIPT,
        UNALIGNABLE,
    }
    catalog = filter_metadata(meta, ["a", "b", "c", "d"], vocab, 0.2, 30.0, wav2vec2_frames, normalization)
    assert list(catalog.ids) == ids and len(catalog) == len(ids)
    assert catalog.durations.tolist() == durations.tolist()
    assert catalog.shard.tolist() == shard and catalog.row.tolist() == row
    assert [catalog.labels(i) for i in range(len(catalog))] == labels
    assert catalog.report == report
    # Resuming checkpoints of earlier versions depends on this digest, and the plan on these durations.
    assert catalog.fingerprint() == fingerprint
    for epoch in (0, 3):
        assert np.array_equal(
            epoch_batches(catalog.durations, 7, epoch, 16, 4), epoch_batches(durations, 7, epoch, 16, 4)
        )
    head = catalog.head(10)
    assert list(head.ids) == ids[:10] and [head.labels(i) for i in range(10)] == labels[:10]


def test_a_catalog_of_nothing_usable_is_empty_with_its_report() -> None:
    meta = pa.table({"id": ["b", "a"], "duration": [0.01, 1.0], "text": ["hi", ""], "shard": [0, 0], "row": [0, 1]})
    catalog = filter_metadata(meta, ["s"], text.build_vocab(["hi"]), 0.1, 30.0, wav2vec2_frames, text.ENGLISH)
    assert len(catalog) == 0 and list(catalog.ids) == []
    assert catalog.report == [{"id": "a", "reason": EMPTY_TRANSCRIPT}, {"id": "b", "reason": SHORTER_THAN_MIN}]
    assert catalog.fingerprint() == hashlib.sha256(b"").hexdigest()


def test_packed_strings_read_back_what_was_packed() -> None:
    words = ["", "a", "żółw", "日本語", "", "x y"]
    packed = PackedStrings.from_arrow(pa.chunked_array([pa.array(words[:2]), pa.array(words[2:])]))
    assert list(packed) == words and packed[-1] == "x y" and packed[np.int64(2)] == "żółw"
    assert list(packed[2:5]) == words[2:5] and list(packed[4:2]) == []
    assert packed.joined(b"\0") == "\0".join(words).encode()
    with pytest.raises(IndexError):
        packed[len(words)]
