"""Words with their CTC frame spans: the one result every decoder gives (`Decoder`), and the greedy decoder.

A word's span runs from the first frame of its first character to the last frame of its last character (end
exclusive); blanks and word delimiters around it are not part of it. Seconds are frames times the model's frame
stride (`frame_seconds`), as Hugging Face's ASR pipeline reports CTC word offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from xlsr_dist.text import PAD, UNK, WORD_DELIMITER


@dataclass(frozen=True)
class Word:
    text: str
    start_frame: int
    end_frame: int  # exclusive


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float  # seconds
    end: float


class Decoder(Protocol):
    def decode(self, log_probs: np.ndarray) -> list[Word]:
        """(frames, vocab) float32 log-softmax of one file -> its words in order."""
        ...


def text_of(words: Sequence[Word]) -> str:
    return " ".join(w.text for w in words)


def timed(words: Sequence[Word], frame_seconds: float) -> list[TimedWord]:
    return [TimedWord(w.text, w.start_frame * frame_seconds, w.end_frame * frame_seconds) for w in words]


def token_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token, first frame, end frame) of each run of equal ids: CTC's collapse of repeats."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    ends = np.concatenate([starts[1:], [ids.size]])
    return ids[starts].astype(np.int64), starts.astype(np.int64), ends.astype(np.int64)


class GreedyDecoder:
    """Best path: per-frame argmax, repeats collapsed, blanks dropped, the delimiter splits words. Its text is
    `decoding.greedy.ctc_greedy_decode`'s for the same ids (tests/test_transcribe_units.py)."""

    def __init__(
        self,
        inverse_vocab: Sequence[str],
        blank_id: int,
        word_delimiter: str = WORD_DELIMITER,
        silent: Sequence[str] = (UNK, PAD),
    ) -> None:
        # A token's text: the delimiter is a space, special tokens print nothing (as ctc_greedy_decode).
        self._text = [" " if t == word_delimiter else ("" if t in silent else t) for t in inverse_vocab]
        self.blank_id = blank_id

    def decode(self, log_probs: np.ndarray) -> list[Word]:
        return self.words_from_ids(np.asarray(log_probs).argmax(axis=-1))

    def words_from_ids(self, ids: np.ndarray) -> list[Word]:
        tokens, starts, ends = token_runs(ids)
        words: list[Word] = []
        chars: list[str] = []
        first = last = 0
        for token, start, end in zip(tokens.tolist(), starts.tolist(), ends.tolist()):
            if token == self.blank_id:
                continue
            # Character by character so that whitespace inside a token splits words as str.split() would.
            for ch in self._text[token]:
                if ch.isspace():
                    if chars:
                        words.append(Word("".join(chars), first, last))
                        chars = []
                    continue
                if not chars:
                    first = start
                chars.append(ch)
                last = end
        if chars:
            words.append(Word("".join(chars), first, last))
        return words
