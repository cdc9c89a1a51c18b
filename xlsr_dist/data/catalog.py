"""A split's usable utterances in canonical (id) order, held compactly: what the epoch plan indexes into.

Every rank needs, for every utterance, only its id, duration, shard, row, audio position and label ids; held as Python
objects (a str per id, a list of ints per transcript) a 1M-utterance corpus costs about a gigabyte per rank. Here
they are numpy arrays: ids one UTF-8 buffer plus offsets (``PackedStrings``), labels one buffer of the smallest
integer type the vocabulary fits plus offsets. The filter runs over whole columns: duplicate ids, durations and CTC
lengths are array operations, and transcripts in the form prepare writes them (plain a-z words) are encoded by a
byte lookup; only other transcripts go through ``text.normalize`` one by one.

The result is what filtering the rows one by one gives -- same utterances, order, labels, skip report and
fingerprint (tests/test_catalog.py holds such a loop as the reference) -- because a checkpoint's data state names
the plan by that fingerprint: a different digest of the same corpus would refuse every saved run's resume. On a node
with several ranks one of them builds it and the others map its copy (``data/node_catalog.py``).
"""

from __future__ import annotations

import hashlib
import operator
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xlsr_dist import text
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.config import DataConfig
from xlsr_dist.data import language, shards
from xlsr_dist.data.skip_reasons import (
    DUPLICATE_ID,
    EMPTY_TRANSCRIPT,
    LONGER_THAN_MAX,
    SHORTER_THAN_MIN,
    UNALIGNABLE,
)
from xlsr_dist.memory import give_back_freed_memory

# Transcripts prepare wrote are already normalised, and text.normalize leaves such a string as it is (a fixed point:
# lower-case words of a-z, apostrophes only between letters, single spaces) in every language and mode, unless
# chars_to_ignore deletes one of those characters. Recognising them skips its per-character Unicode pass, the larger
# part of every rank's start-up.
_ALREADY_NORMAL = re.compile(r"[a-z]+(?:'[a-z]+)*(?: [a-z]+(?:'[a-z]+)*)*")
_ALREADY_NORMAL_CHARACTERS = frozenset(string.ascii_lowercase + "'")


class PackedStrings(Sequence[str]):
    """A read-only sequence of strings stored as one UTF-8 buffer and [n + 1] offsets (no Python object each)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data  # uint8
        self.offsets = offsets  # int64 [n + 1], offsets[0] may be > 0 for a slice

    @staticmethod
    def from_arrow(array: pa.Array | pa.ChunkedArray) -> PackedStrings:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_string())
        array = array.cast(pa.large_string())
        _, offsets, data = array.buffers()
        starts = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
        chars = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
        return PackedStrings(chars[starts[0] : starts[-1]].copy(), starts - starts[0])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> PackedStrings: ...
    def __getitem__(self, i: int | slice) -> str | PackedStrings:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("PackedStrings slices take every item")
            return PackedStrings(self.data, self.offsets[start : max(start, stop) + 1])
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} strings")
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def joined(self, separator: bytes) -> bytes:
        """The UTF-8 of ``separator.join(self)``, without making a str per item."""
        body = self.data[self.offsets[0] : self.offsets[-1]]
        if len(self) < 2 or not separator:
            return body.tobytes()
        cuts = np.repeat(self.offsets[1:-1] - self.offsets[0], len(separator))
        fill = np.tile(np.frombuffer(separator, dtype=np.uint8), len(self) - 1)
        return np.insert(body, cuts, fill).tobytes()


@dataclass
class Catalog:
    """The filtered utterances in canonical (id) order: what the plan indexes into."""

    ids: PackedStrings
    durations: np.ndarray  # float64 seconds
    shard: np.ndarray  # int32 index into shard_paths
    row: np.ndarray  # int32 row within the shard
    label_flat: np.ndarray  # all label sequences concatenated (uint8/uint16/int32: the vocabulary's size)
    label_offsets: np.ndarray  # int64 [n + 1]
    blob_offset: np.ndarray  # int64 byte offset of the audio in its shard (shards.read_audio); -1: not known
    blob_length: np.ndarray  # int64 its length
    shard_paths: list[str]
    shard_digests: list[str]  # each shard's footer digest when the positions were listed ('' where none were)
    report: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.durations)

    def labels(self, i: int) -> list[int]:
        return self.label_flat[self.label_offsets[i] : self.label_offsets[i + 1]].tolist()

    def fingerprint(self) -> str:
        # sha256 of "\0".join(ids), then the durations as little-endian float64: saved checkpoints' data states
        # carry this digest, so its definition cannot change without refusing their resume.
        h = hashlib.sha256()
        h.update(self.ids.joined(b"\0"))
        h.update(np.ascontiguousarray(self.durations, dtype="<f8").tobytes())
        return h.hexdigest()

    @property
    def skipped(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.report))

    def hours(self) -> float:
        return float(self.durations.sum()) / 3600.0

    def head(self, n: int) -> Catalog:
        """The first ``n`` utterances (in id order), with the same report."""
        return Catalog(
            ids=self.ids[:n],
            durations=self.durations[:n],
            shard=self.shard[:n],
            row=self.row[:n],
            label_flat=self.label_flat[: self.label_offsets[n]],
            label_offsets=self.label_offsets[: n + 1],
            blob_offset=self.blob_offset[:n],
            blob_length=self.blob_length[:n],
            shard_paths=self.shard_paths,
            shard_digests=self.shard_digests,
            report=self.report,
        )


def concatenate(catalogs: Sequence[Catalog]) -> Catalog:
    """The catalogs one after the other (a mixed run's sets): indices of the first come first, shard indices shifted,
    reports joined. A private copy: the node's mapped copies stay per set."""
    if len(catalogs) == 1:
        return catalogs[0]

    def shifted(offsets: Sequence[np.ndarray]) -> np.ndarray:
        ends = np.cumsum([0] + [int(o[-1] - o[0]) for o in offsets])
        return np.concatenate([[0]] + [o[1:] - o[0] + base for o, base in zip(offsets, ends[:-1])]).astype(np.int64)

    ids = [c.ids for c in catalogs]
    shard_base = np.cumsum([0] + [len(c.shard_paths) for c in catalogs])
    return Catalog(
        ids=PackedStrings(
            np.concatenate([p.data[p.offsets[0] : p.offsets[-1]] for p in ids]), shifted([p.offsets for p in ids])
        ),
        durations=np.concatenate([c.durations for c in catalogs]),
        shard=np.concatenate([c.shard + base for c, base in zip(catalogs, shard_base)]).astype(np.int32),
        row=np.concatenate([c.row for c in catalogs]),
        label_flat=np.concatenate([c.label_flat[c.label_offsets[0] : c.label_offsets[-1]] for c in catalogs]),
        label_offsets=shifted([c.label_offsets for c in catalogs]),
        blob_offset=np.concatenate([c.blob_offset for c in catalogs]),
        blob_length=np.concatenate([c.blob_length for c in catalogs]),
        shard_paths=[p for c in catalogs for p in c.shard_paths],
        shard_digests=[d for c in catalogs for d in c.shard_digests],
        report=[r for c in catalogs for r in c.report],
    )


def build_catalog(
    location: str, vocab: dict[str, int], data_cfg: DataConfig, frames_fn: Callable[[int], int]
) -> Catalog:
    """List and filter the utterances of a split; identical on every rank (reads metadata columns only)."""
    paths = shards.list_shards(location)
    normalization = data_cfg.normalization()
    if len(data_cfg.train_sets()) > 1:
        normalization = language.read_as(location, normalization)  # mixed sets: each set's own language
    catalog = filter_metadata(
        shards.read_metadata(paths),
        paths,
        vocab,
        data_cfg.min_duration_in_seconds,
        data_cfg.max_duration_in_seconds,
        frames_fn,
        normalization,
        shards.footer_digests(paths),
    )
    # Arrow keeps the sorted and filtered copies' pages (~230 MB at 1M utterances) and glibc what the shards' parsed
    # footers and the temporaries freed (~250 MB at 1M, measured): memory the rank never uses again.
    give_back_freed_memory()
    return catalog


def label_dtype(vocab: dict[str, int]) -> np.dtype:
    top = max(vocab.values(), default=0)
    return np.dtype(np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.int32)


def filter_metadata(
    meta: pa.Table,
    shard_paths: Sequence[str],
    vocab: dict[str, int],
    min_seconds: float,
    max_seconds: float,
    frames_fn: Callable[[int], int],
    normalization: text.TextNormalization,
    shard_digests: Sequence[str] = (),
) -> Catalog:
    """Drop what cannot train (the stream's skip reasons), then sort by id so the order ignores the sharding.
    Transcripts are normalised (again: a no-op for what prepare wrote) the way the split was prepared.

    ``frames_fn`` must be non-decreasing in the sample count (every convolution length formula is): the CTC
    length check is made through the shortest audio that gives each label count enough frames.

    The audio positions (``blob_offset``/``blob_length`` of ``shards.read_metadata``) are kept when ``shard_digests``
    names the files they were listed from; otherwise reads go through ``shards.read_rows``."""
    order = pc.sort_indices(meta, sort_keys=[("id", "ascending"), ("shard", "ascending"), ("row", "ascending")])
    meta = meta.take(order)
    n = meta.num_rows
    ids = meta.column("id")
    durations = meta.column("duration").to_numpy().astype(np.float64)
    # The first failing check names the reason, in this order (as the stream always reported them).
    reasons = np.full(n, "", dtype=object)
    duplicate = np.zeros(n, dtype=bool)
    if n > 1:
        duplicate[1:] = pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    short = ~duplicate & (durations < min_seconds)
    long = ~duplicate & ~short & (durations > max_seconds)
    reasons[duplicate], reasons[short], reasons[long] = DUPLICATE_ID, SHORTER_THAN_MIN, LONGER_THAN_MAX
    candidates = np.flatnonzero(~(duplicate | short | long))
    texts = pc.fill_null(meta.column("text"), "").take(pa.array(candidates, type=pa.int64())).combine_chunks()
    flat, offsets = _encode(texts, vocab, normalization)
    lengths = np.diff(offsets)
    empty = lengths == 0
    # round() of the samples as int(round(seconds * SAMPLE_RATE)) does: half to even.
    samples = np.rint(durations[candidates] * SAMPLE_RATE).astype(np.int64)
    longest = int(samples.max()) if samples.size else 0
    unalignable = ~empty & (samples < _shortest_audio(_ctc_min_frames(flat, offsets), frames_fn, longest))
    reasons[candidates[empty]], reasons[candidates[unalignable]] = EMPTY_TRANSCRIPT, UNALIGNABLE
    kept_of_candidates = ~(empty | unalignable)
    keep = candidates[kept_of_candidates]
    if not kept_of_candidates.all():
        flat = flat[np.repeat(kept_of_candidates, lengths)]
        offsets = np.concatenate([[0], np.cumsum(lengths[kept_of_candidates])]).astype(np.int64)
    skipped = np.flatnonzero(reasons != "")
    skipped_ids = ids.take(pa.array(skipped, type=pa.int64())).to_pylist()
    kept = pa.array(keep, type=pa.int64())
    if shard_digests and "blob_offset" in meta.column_names:
        blob_offset = meta.column("blob_offset").to_numpy()[keep].astype(np.int64)
        blob_length = meta.column("blob_length").to_numpy()[keep].astype(np.int64)
    else:
        blob_offset = blob_length = np.full(len(keep), -1, dtype=np.int64)
    return Catalog(
        ids=PackedStrings.from_arrow(ids.take(kept)),
        durations=durations[keep],
        shard=meta.column("shard").to_numpy()[keep].astype(np.int32),
        row=meta.column("row").to_numpy()[keep].astype(np.int32),
        label_flat=flat,
        label_offsets=offsets,
        blob_offset=blob_offset,
        blob_length=blob_length,
        shard_paths=list(shard_paths),
        shard_digests=list(shard_digests) or [""] * len(shard_paths),
        report=[{"id": uid, "reason": str(reasons[i])} for uid, i in zip(skipped_ids, skipped.tolist())],
    )


def _encode(
    texts: pa.Array, vocab: dict[str, int], normalization: text.TextNormalization
) -> tuple[np.ndarray, np.ndarray]:
    """(labels of all texts concatenated, [n + 1] offsets): ``text.encode(text.normalize(t))`` of each."""
    dtype = label_dtype(vocab)
    packed = PackedStrings.from_arrow(texts)
    byte_lengths = np.diff(packed.offsets)
    if _ALREADY_NORMAL_CHARACTERS & set(normalization.chars_to_ignore) or len(packed) == 0:
        fast = np.zeros(len(packed), dtype=bool)
    else:
        pattern = f"^(?:{_ALREADY_NORMAL.pattern})$"
        fast = pc.match_substring_regex(texts, pattern).to_numpy(zero_copy_only=False)
    slow_labels = [text.encode(text.normalize(packed[i], normalization), vocab) for i in np.flatnonzero(~fast).tolist()]
    # Fast texts are ASCII: one label per byte.
    lengths = byte_lengths.copy()
    lengths[~fast] = [len(x) for x in slow_labels]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    byte_labels = np.array([text.encode(chr(b), vocab)[0] for b in range(128)] + [0] * 128, dtype=dtype)
    fast_flat = byte_labels[packed.data[np.repeat(fast, byte_lengths)]]
    if fast.all():
        return fast_flat, offsets
    flat = np.empty(int(offsets[-1]), dtype=dtype)
    in_fast = np.repeat(fast, lengths)
    flat[in_fast] = fast_flat
    flat[~in_fast] = np.fromiter((t for x in slow_labels for t in x), dtype=dtype, count=int((~in_fast).sum()))
    return flat, offsets


def _ctc_min_frames(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``text.ctc_min_frames`` of each label sequence: its length plus its repeated neighbours."""
    repeats_before = np.concatenate([[0], np.cumsum(flat[1:] == flat[:-1])]) if flat.size else np.zeros(1, np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    repeats = np.zeros(len(starts), dtype=np.int64)
    repeats[nonempty] = repeats_before[ends[nonempty] - 1] - repeats_before[starts[nonempty]]
    return (ends - starts) + repeats


def _shortest_audio(needed: np.ndarray, frames_fn: Callable[[int], int], longest: int) -> np.ndarray:
    """Per entry of ``needed``, the fewest samples for which ``frames_fn`` gives that many frames (``longest + 1``
    when even ``longest`` samples do not): one binary search per distinct frame count, not a call per utterance."""
    distinct, where = np.unique(needed, return_inverse=True)
    shortest = np.empty(len(distinct), dtype=np.int64)
    for k, frames in enumerate(distinct.tolist()):
        lo, hi = 0, longest + 1  # frames_fn(hi) >= frames, taken as true beyond the longest audio
        while lo < hi:
            mid = (lo + hi) // 2
            if frames_fn(mid) >= frames:
                hi = mid
            else:
                lo = mid + 1
        shortest[k] = lo
    return shortest[where]
