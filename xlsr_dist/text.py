"""English transcript normalisation and the character vocabulary of the CTC head.

Normalisation (applied by prepare and again, idempotently, when training reads transcripts):
- case: lower-cased;
- apostrophes: typographic ones (’ ‘ `) become ', kept inside words (don't, o'clock), dropped at word edges;
- digits: each run of digits is spelled out as English number words (42 -> forty two, 1999 -> one thousand nine
  hundred ninety nine); the reference model card's corpus has no digits in its targets, so the model never needs them;
- accents: folded to ASCII where a plain letter exists (café -> cafe); any other character becomes a space;
- punctuation is removed; runs of whitespace become one space.
The vocabulary is the set of characters of the training transcripts, space written as the word delimiter "|",
then [UNK], then [PAD], which is also the CTC blank (HF's run_speech_recognition_ctc convention).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

WORD_DELIMITER = "|"
UNK = "[UNK]"
PAD = "[PAD]"

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]


def number_words(n: int) -> str:
    """Non-negative integer -> English words without 'and' or hyphens (the vocabulary has neither)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            words = f"{number_words(head)} {name}"
            return words if rest == 0 else f"{words} {number_words(rest)}"
    raise AssertionError("unreachable")


def _spell_digits(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) > 15:  # an id or a phone number, not a quantity: read digit by digit
        return " " + " ".join(_ONES[int(c)] for c in digits) + " "
    return " " + number_words(int(digits)) + " "


_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})


def normalize(text: str) -> str:
    """Normalise one English transcript (see the module docstring); idempotent."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[0-9]+", _spell_digits, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'+|'+(?![a-z])", " ", text)
    return " ".join(text.split())


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    chars = set()
    for t in texts:
        chars.update(t)
    chars.discard(" ")
    ordered = sorted(chars) + [WORD_DELIMITER]
    vocab = {c: i for i, c in enumerate(ordered)}
    vocab[UNK] = len(vocab)
    vocab[PAD] = len(vocab)
    return vocab


def save_vocab(vocab: dict[str, int], path: str | Path) -> None:
    Path(path).write_text(json.dumps(vocab, indent=1, ensure_ascii=False))


def load_vocab(path: str | Path) -> dict[str, int]:
    return dict(json.loads(Path(path).read_text()))


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    unk = vocab[UNK]
    return [vocab.get(WORD_DELIMITER if c == " " else c, unk) for c in text]


def ctc_min_frames(labels: Sequence[int]) -> int:
    """Output frames CTC needs for ``labels``: one per label plus a blank between each repeated pair."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


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


def inverse(vocab: dict[str, int]) -> list[str]:
    inv = [""] * len(vocab)
    for token, i in vocab.items():
        inv[i] = token
    return inv
