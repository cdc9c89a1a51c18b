"""Transcript normalisation and the character vocabulary of the CTC head."""

from __future__ import annotations

from xlsr_dist import text


def test_normalisation_rules() -> None:
    assert text.normalize("Hello, World!") == "hello world"
    assert text.normalize("Don’t stop") == "don't stop"
    assert text.normalize("'quoted' words'") == "quoted words"
    assert text.normalize("I have 42 apples") == "i have forty two apples"
    assert text.normalize("In 1999.") == "in one thousand nine hundred ninety nine"
    assert text.normalize("Café  naïve") == "cafe naive"
    assert text.normalize("你好") == ""


def test_normalisation_is_idempotent() -> None:
    for s in ["Hello, World!", "It's 5 o'clock", "  spaced   out  ", "Ünïcödé"]:
        once = text.normalize(s)
        assert text.normalize(once) == once


def test_vocab_uses_word_delimiter_and_pad_is_last() -> None:
    vocab = text.build_vocab(["ab c", "ca'b"])
    assert list(vocab) == ["'", "a", "b", "c", "|", "[UNK]", "[PAD]"]
    assert vocab[text.PAD] == len(vocab) - 1
    assert text.encode("ab c", vocab) == [1, 2, 4, 3]
    assert text.encode("z", vocab) == [vocab[text.UNK]]


def test_greedy_decode_collapses_repeats_and_blanks() -> None:
    vocab = text.build_vocab(["hello world"])
    inv = text.inverse(vocab)
    blank = vocab[text.PAD]
    ids = [
        vocab["h"],
        vocab["h"],
        blank,
        vocab["e"],
        vocab["l"],
        blank,
        vocab["l"],
        vocab["o"],
        vocab["|"],
        vocab["w"],
        vocab["o"],
        vocab["r"],
        vocab["l"],
        vocab["d"],
        blank,
    ]
    assert text.ctc_greedy_decode(ids, inv, blank) == "hello world"


def test_ctc_min_frames_counts_blanks_between_repeats() -> None:
    assert text.ctc_min_frames([1, 2, 3]) == 3
    assert text.ctc_min_frames([1, 1, 2, 2, 2]) == 8
