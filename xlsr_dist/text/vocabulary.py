"""The character vocabulary of the CTC head.

The vocabulary is the set of characters of the training transcripts in any script, space written as the word
delimiter "|", then [UNK], then [PAD], which is also the CTC blank (HF's run_speech_recognition_ctc convention).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from xlsr_dist import atomic
from xlsr_dist.text.normalization import PAD, UNK, WORD_DELIMITER


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    chars = set()
    for t in texts:
        chars.update(t)
    # The delimiter cannot also be a character (normalize never leaves one; an index used twice would not be a
    # vocabulary).
    chars.discard(" ")
    chars.discard(WORD_DELIMITER)
    ordered = sorted(chars) + [WORD_DELIMITER]
    vocab = {c: i for i, c in enumerate(ordered)}
    vocab[UNK] = len(vocab)
    vocab[PAD] = len(vocab)
    return vocab


def save_vocab(vocab: dict[str, int], path: str | Path) -> None:
    atomic.write_text(path, json.dumps(vocab, indent=1, ensure_ascii=False))


def load_vocab(path: str | Path) -> dict[str, int]:
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    unk = vocab[UNK]
    return [vocab.get(WORD_DELIMITER if c == " " else c, unk) for c in text]


def ctc_min_frames(labels: Sequence[int]) -> int:
    """Output frames CTC needs for ``labels``: one per label plus a blank between each repeated pair."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


def inverse(vocab: dict[str, int]) -> list[str]:
    inv = [""] * len(vocab)
    for token, i in vocab.items():
        inv[i] = token
    return inv
