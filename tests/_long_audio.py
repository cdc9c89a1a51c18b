"""A long recording with known word boundaries: demo utterances (held-out eval speakers) one after another.

Each word's start and end come from replaying the random draws demo.synthesize makes for its segment lengths (speed,
then each pause and letter, then the leading and trailing silence); the replayed length must equal the synthesised
one, so a change in the synthesiser's draws fails here instead of shifting the boundaries silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.data import demo


@dataclass(frozen=True)
class Span:
    text: str
    start: int  # samples
    end: int


@dataclass(frozen=True)
class Recording:
    wave: np.ndarray  # as written (PCM_16 rounding), float32
    utterances: list[Span]
    words: list[Span]


PAUSE_S = (0.2, 0.5)


def _key(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 9_000, index])


def _word_spans(text: str, speaker: demo.Speaker, rng: np.random.Generator) -> tuple[list[Span], int]:
    """The draws of demo.synthesize, replayed: (word spans from the utterance start, utterance length)."""
    sr = SAMPLE_RATE
    speed = rng.uniform(0.9, 1.1)
    bounds: list[tuple[int, int]] = []
    pos = 0
    for w, word in enumerate(text.split(" ")):
        if w:
            pos += int(sr * speaker.gap_seconds * speed * rng.uniform(0.8, 1.25))
        start = pos
        for _ in word:
            pos += int(sr * speaker.letter_seconds * speed * rng.uniform(0.85, 1.15))
        bounds.append((start, pos))
    lead, trail = (int(sr * rng.uniform(0.02, 0.06)) for _ in range(2))
    spans = [Span(word, lead + a, lead + b) for word, (a, b) in zip(text.split(" "), bounds)]
    return spans, lead + pos + trail


def make_recording(seconds: float, seed: int = 42) -> Recording:
    voices = demo.speakers(seed, "eval")
    pieces: list[np.ndarray] = []
    utterances: list[Span] = []
    words: list[Span] = []
    at = 0
    index = 0
    while at < seconds * SAMPLE_RATE:
        pick = np.random.default_rng(np.random.SeedSequence([seed, 9_001, index]))
        text = " ".join(demo.WORDS[i] for i in pick.integers(0, len(demo.WORDS), int(pick.integers(1, 4))))
        speaker = voices[int(pick.integers(len(voices)))]
        wave = demo.synthesize(text, speaker, np.random.default_rng(_key(seed, index)))
        spans, length = _word_spans(text, speaker, np.random.default_rng(_key(seed, index)))
        if length != wave.shape[0]:
            raise AssertionError(f"replayed length {length} != synthesised {wave.shape[0]}: demo.synthesize changed")
        # A pause between utterances, as between sentences: the demo's utterances end in less silence (20-60 ms)
        # than lies between their words (90-150 ms), so back to back they would run into one another's words.
        pause = np.zeros(int(pick.uniform(*PAUSE_S) * SAMPLE_RATE), dtype=np.float32)
        pieces += [wave, pause]
        utterances.append(Span(text, at, at + length))
        words.extend(Span(s.text, at + s.start, at + s.end) for s in spans)
        at += length + pause.shape[0]
        index += 1
    # PCM_16 as written to disk, so per-utterance slices see exactly the samples the long file holds.
    full = np.concatenate(pieces)
    quantised = (np.clip(np.round(full * 32767), -32768, 32767) / 32768).astype(np.float32)
    return Recording(quantised, utterances, words)


def write(recording: Recording, path: Path, seconds: float | None = None) -> Path:
    """The recording (or its first ``seconds``) as 16-bit FLAC."""
    wave = recording.wave if seconds is None else recording.wave[: int(seconds * SAMPLE_RATE)]
    sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
    return path
