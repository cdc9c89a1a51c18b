"""Greedy CTC decoding: the most likely output at each frame, repeats collapsed, blanks dropped."""

from __future__ import annotations

from collections.abc import Sequence

from xlsr_dist.text import PAD, UNK, WORD_DELIMITER


def ctc_greedy_decode(ids: Sequence[int], inverse_vocab: Sequence[str], blank_id: int) -> str:
    """Collapse repeats, drop blanks, map '|' back to spaces."""
    out: list[str] = []
    previous = -1
    for i in ids:
        if i != previous and i != blank_id:
            token = inverse_vocab[i]
            out.append(" " if token == WORD_DELIMITER else ("" if token in (UNK, PAD) else token))
        previous = i
    return " ".join("".join(out).split())
