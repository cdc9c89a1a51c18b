"""Corpus item -> shard row, or the reason it is skipped; many items over a pool of decoding processes.

Each item is converted (channels averaged to mono, resampled to 16 kHz with soxr, stored as PCM_16 FLAC) or
skipped with a reason: missing or unreadable audio, truncated audio (the header promises more than the file holds),
zero-length or non-finite audio, audio longer than ``--max_duration_in_seconds`` (those are xlsr_dist.audio's), an
empty transcript (before or after normalisation), more than ``--max_chars_per_second`` characters per second of
audio (a transcript CTC cannot align; the cap is ``text.characters_per_second_limit``, lower in scripts where one
character is a syllable or a word). Transcripts are normalised with ``xlsr_dist.text.normalize`` and the corpus's
``TextNormalization`` (``--language`` and the flags around it).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from multiprocessing.pool import AsyncResult
from typing import Any

import numpy as np

from xlsr_dist.audio import SAMPLE_RATE, UNREADABLE, AudioError, encode_flac, load_audio
from xlsr_dist.data.recipes.items import Item, PrepareError, RowAudio, Skip
from xlsr_dist.data.skip_reasons import EMPTY_TRANSCRIPT, TRANSCRIPT_TOO_DENSE
from xlsr_dist.text import ENGLISH, TextNormalization, characters_per_second_limit, normalize

# Bump when the same item and settings would convert to other bytes: finished shards of older plans are rebuilt.
PLAN_VERSION = 1
# A worker that returns nothing for this long has died or hung on one file (a crash inside a native decoder
# would otherwise leave multiprocessing.Pool waiting forever).
RESULT_TIMEOUT_S = 900.0
# Chunks submitted per worker ahead of the result being waited for: enough to keep every worker busy.
_CHUNKS_AHEAD = 4

Row = dict[str, Any]
"""A shard row: id, audio (FLAC bytes), text (normalised), duration (seconds), source."""
Task = tuple[int, Item]
"""(the shard the item goes to, the item)."""


@dataclass(frozen=True)
class Settings:
    max_duration_in_seconds: float = 30.0
    max_chars_per_second: float = 25.0
    normalization: TextNormalization = ENGLISH
    unlabelled: bool = False
    """audio without transcripts (``--layout audio``, for pretraining): rows keep an empty text"""

    def key(self) -> dict[str, Any]:
        """What a shard's plan hash and report.json record of the settings."""
        key: dict[str, Any] = {
            "version": PLAN_VERSION,
            "max_duration_in_seconds": self.max_duration_in_seconds,
            "max_chars_per_second": self.max_chars_per_second,
        }
        # English's transcripts and plans are those of the versions before languages: their finished shards stay.
        if self.normalization != ENGLISH:
            key["text_normalization"] = self.normalization.to_dict()
        if self.unlabelled:
            key["unlabelled"] = True
        return key


# What every task in this process needs, set once per worker process (and once in-process for one worker).
_worker: dict[str, Any] = {}


def _init_worker(settings: Settings, row_audio: RowAudio | None) -> None:
    _worker["settings"] = settings
    _worker["row_audio"] = row_audio


def _load(item: Item, max_seconds: float) -> np.ndarray:
    if isinstance(item.audio, int):
        return _worker["row_audio"].load(item.audio, max_seconds)
    return load_audio(item.audio, max_seconds)


def process_item(item: Item, settings: Settings) -> Row | Skip:
    """One item -> a shard row, or the reason it is skipped. Never raises: a bad file must not stop a corpus."""
    try:
        if settings.unlabelled:
            wave = _load(item, settings.max_duration_in_seconds)
            duration = wave.shape[0] / SAMPLE_RATE
            return {"id": item.id, "audio": encode_flac(wave), "text": "", "duration": duration, "source": item.source}
        if not item.text.strip():
            return Skip(item.id, item.source, EMPTY_TRANSCRIPT, "no transcript")
        text = normalize(item.text, settings.normalization)
        if not text:
            return Skip(item.id, item.source, EMPTY_TRANSCRIPT, f"nothing left after normalising {item.text[:60]!r}")
        wave = _load(item, settings.max_duration_in_seconds)
        duration = wave.shape[0] / SAMPLE_RATE
        limit = characters_per_second_limit(text, settings.max_chars_per_second)
        if limit > 0 and len(text) > limit * duration:
            return Skip(
                item.id,
                item.source,
                TRANSCRIPT_TOO_DENSE,
                f"{len(text)} characters in {duration:.2f} s (> {limit:g}/s)",
            )
        return {"id": item.id, "audio": encode_flac(wave), "text": text, "duration": duration, "source": item.source}
    except AudioError as e:
        return Skip(item.id, item.source, e.reason, e.detail)
    except Exception as e:  # a decoder quirk nobody anticipated: report it, keep going
        return Skip(item.id, item.source, UNREADABLE, f"{type(e).__name__}: {e}")


def _work(tasks: list[Task]) -> list[tuple[int, Row | Skip]]:
    return [(shard, process_item(item, _worker["settings"])) for shard, item in tasks]


def convert_items(
    tasks: Iterable[Task], total: int, num_workers: int, settings: Settings, row_audio: RowAudio | None
) -> Iterator[tuple[int, Row | Skip]]:
    """(shard, row or skip) per task, in task order (so shards complete one after another); up to ``num_workers``
    processes decode. ``tasks`` (``total`` of them) are taken lazily, a few chunks ahead of the results, so memory
    holds what is in flight, not the corpus."""
    if total <= 0:
        return
    workers = max(1, min(num_workers, total))
    if workers == 1:
        _init_worker(settings, row_audio)
        for t in tasks:
            yield from _work([t])
        return
    size = max(1, min(16, total // (workers * 8)))
    source = iter(tasks)
    # Submitted chunks, oldest first. Not Pool.imap: it reads its whole input ahead (the corpus into the task
    # queue), and with a chunksize returns a plain generator with no next(timeout) to notice a dead worker.
    in_flight: deque[tuple[list[Task], AsyncResult]] = deque()
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(settings, row_audio)) as pool:
        while True:
            while len(in_flight) < workers * _CHUNKS_AHEAD and (chunk := list(islice(source, size))):
                in_flight.append((chunk, pool.apply_async(_work, (chunk,))))
            if not in_flight:
                return
            chunk, result = in_flight.popleft()
            try:
                yield from result.get(timeout=RESULT_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                where = ", ".join(repr(item.id) for _, item in chunk[:3])
                raise PrepareError(
                    f"no result for {RESULT_TIMEOUT_S:.0f} s from the worker decoding {where}"
                    f"{' ...' if len(chunk) > 3 else ''}; it probably died on one of them. Finished shards are "
                    "kept: re-run, or move that file away, or use --num_workers 1 to see the error"
                ) from None
