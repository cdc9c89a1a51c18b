"""Timed words -> subtitle cues -> SRT or WebVTT text.

A cue holds at most ``max_words`` words and lasts at most ``max_seconds`` (from its first word's start to its last
word's end); a pause of ``max_gap`` seconds or more between words also starts a new cue, so a cue is not shown over
a silence. A word longer than ``max_seconds`` still gets a cue of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xlsr_dist.decoding.words import TimedWord

MAX_WORDS = 7
MAX_SECONDS = 4.0
MAX_GAP = 1.0
# A cue must last a little for a player to show it; a one-frame word could otherwise give start == end.
MIN_CUE_SECONDS = 0.05


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues(
    words: Sequence[TimedWord],
    max_words: int = MAX_WORDS,
    max_seconds: float = MAX_SECONDS,
    max_gap: float = MAX_GAP,
) -> list[Cue]:
    out: list[Cue] = []
    group: list[TimedWord] = []
    for w in words:
        if group and (
            len(group) >= max_words or w.end - group[0].start > max_seconds or w.start - group[-1].end >= max_gap
        ):
            out.append(_cue(group))
            group = []
        group.append(w)
    if group:
        out.append(_cue(group))
    return out


def _cue(group: Sequence[TimedWord]) -> Cue:
    start = group[0].start
    return Cue(start, max(group[-1].end, start + MIN_CUE_SECONDS), " ".join(w.text for w in group))


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def srt_time(seconds: float) -> str:
    """HH:MM:SS,mmm"""
    return _clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    """HH:MM:SS.mmm"""
    return _clock(seconds, ".")


def to_srt(cue_list: Sequence[Cue]) -> str:
    blocks = [f"{i}\n{srt_time(c.start)} --> {srt_time(c.end)}\n{c.text}\n" for i, c in enumerate(cue_list, 1)]
    return "\n".join(blocks)


def to_vtt(cue_list: Sequence[Cue]) -> str:
    blocks = [f"{vtt_time(c.start)} --> {vtt_time(c.end)}\n{c.text}\n" for c in cue_list]
    return "\n".join(["WEBVTT\n", *blocks])


def render(fmt: str, words: Sequence[TimedWord], max_words: int = MAX_WORDS, max_seconds: float = MAX_SECONDS) -> str:
    """``fmt`` 'srt' or 'vtt'."""
    cue_list = cues(words, max_words, max_seconds)
    return to_srt(cue_list) if fmt == "srt" else to_vtt(cue_list)
