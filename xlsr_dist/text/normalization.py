"""Transcript normalisation for any language XLS-R speaks.

``normalize(text, TextNormalization(language, fold_accents, mode, chars_to_ignore))`` is applied by prepare and again,
idempotently, when training and evaluation read transcripts; a corpus is normalised one way, recorded with it.
HF's run_speech_recognition_ctc removes ``--chars_to_ignore``, lower-cases and takes whatever characters remain; mode
``"default"`` does that for every script and, beyond it, in this order:

1. ``chars_to_ignore`` (HF's meaning): each listed character is deleted from the raw transcript, replaced by nothing
   (``-`` joins ``peut-être`` into ``peutêtre``), and deleted again after step 7 so that spelled numbers or lower
   case cannot bring it back. Unlike HF's unescaped regex class every character is literal, and whitespace in the
   list only separates entries (``",?."`` and ``", ? ."`` are the same), so no space is deleted.
2. Apostrophes: typographic ones (’ ‘ ` ´) become '.
3. Compatibility forms: only the Halfwidth and Fullwidth Forms block is folded (full-width Ａ１ -> A1, half-width
   katakana -> katakana: the forms CJK text mixes in); with accent folding (step 6), everything (NFKD: ² -> 2).
4. Digits (decimal digits of any script) are spelled out in the corpus's language: English with this module's own
   words (42 -> forty two, 1999 -> one thousand nine hundred ninety nine: no "and", no hyphens, as before), other
   languages with num2words (fr 42 -> quarante-deux, de -> zweiundvierzig); a run of more than 15 digits (an id, a
   phone number) is read digit by digit. Languages num2words lacks (hi, zh, ...) keep their digits, which become
   characters of the vocabulary, as in HF's recipe.
5. Unicode NFC, not NFKD: combining marks are parts of letters in Devanagari, Thai, Vietnamese. Then lower case
   with the language's rules: Turkish, Azerbaijani, Crimean Tatar and Gagauz map I -> ı and İ -> i; ``lower``, not
   ``casefold``, so ß stays ß; Greek gets its final ς.
6. Accent folding only where asked: ``fold_accents`` None (the default) means on for English, off for every other
   language. Folding deletes combining diacritics (canonical combining class > 0: Latin accents, Arabic harakat,
   Hebrew niqqud, but also Devanagari virama: do not fold scripts whose vowels are marks) and recomposes; ß, ı, ø
   and other letters that have no base letter stay. English with folding is the ASCII path kept from before
   (output alphabet a-z and '; other letters are dropped): its results are exactly the previous ones.
7. Every letter, combining mark and number of any script is kept (Unicode categories L*, M*, N*: Arabic harakat and
   Hebrew niqqud are marks of their letters and stay unless folded). The Arabic tatweel (a stretching stroke, not a
   letter) and invisible format characters (soft hyphen, BOM, direction marks) are deleted. Punctuation and symbols,
   CJK full-width punctuation and ``|`` (the word delimiter) included, become a space, hyphens too (num2words'
   quarante-deux -> quarante deux, as well-known -> well known). In languages written without spaces between words
   (``writes_words`` False: zh, ja, th, ...) punctuation and spelled numbers are joined without a space instead, so
   no word delimiter is invented there; spaces the text has stay.
8. Kept inside words, dropped at their edges: the apostrophe (don't, l'homme, м'ясо; ʼ and ʻ are letters, category
   Lm, and always stay), Hebrew geresh and gershayim (ג׳, צה״ל), the zero-width non-joiner and joiner (Persian and
   Indic spelling: می‌خواهم).
9. Whitespace of any kind becomes one space; ends are stripped; the result is NFC.

Mode ``"none"`` (``--text_normalization none``, for corpora normalised already): only ``chars_to_ignore`` is applied,
``|`` (the word delimiter, never a character of the vocabulary) becomes a space and whitespace is collapsed; case,
digits and punctuation stay.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from num2words import CONVERTER_CLASSES, num2words

WORD_DELIMITER = "|"
UNK = "[UNK]"
PAD = "[PAD]"

MODES = ("default", "none")

# Languages written without spaces between words (CER is their primary metric): Chinese (and its languages
# written in Han characters), Japanese, Thai, Lao, Khmer, Burmese and Shan, Tibetan and Dzongkha. ISO 639-1 codes
# and the 639-2/3 codes of the same languages.
NO_WORD_SPACES = frozenset(
    "zh zho chi cmn yue wuu hak nan gan hsn cjy ja jpn th tha lo lao km khm my mya bur shn bo bod tib dz dzo".split()
)
# Languages whose dotted and dotless i are distinct letters: I -> ı, İ -> i.
DOTLESS_I = frozenset("tr tur az aze azj crh gag".split())
_DOTLESS_I_LOWER = str.maketrans({"I": "ı", "İ": "i"})
# ISO 639 codes whose num2words language has another name.
_NUM2WORDS_NAMES = {"kk": "kz", "nb": "no", "nn": "no"}
# num2words 0.5.14's Amharic fails on 1999 and does not return for 12-digit numbers: its digits are kept.
_NUM2WORDS_BROKEN = frozenset({"am"})
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


def writes_words(language: str) -> bool:
    """False for languages written without spaces between words (zh, ja, th, lo, km, my, bo, ...): their word
    error rate measures the text's chance spaces, so the character error rate is the metric that counts."""
    return language not in NO_WORD_SPACES


def settings_problems(language: str, mode: str) -> list[str]:
    """Problems with these normalisation settings, one line each naming the flag (prepare's and train's)."""
    problems = []
    if not _LANGUAGE_CODE.fullmatch(language):
        base = re.split(r"[-_]", language, maxsplit=1)[0].lower()
        hint = f"; for {language!r} give {base!r}" if base != language and _LANGUAGE_CODE.fullmatch(base) else ""
        problems.append(
            f"--language: {language!r} is not an ISO 639 language code (2-3 lower-case letters: en, de, tr, zh){hint}"
        )
    if mode not in MODES:
        problems.append(f"--text_normalization: {mode!r} is not one of {', '.join(repr(m) for m in MODES)}")
    return problems


@dataclass(frozen=True)
class TextNormalization:
    """How transcripts of one corpus are normalised (see the module docstring). Record it with the corpus:
    prepare, training and evaluation must use the same one."""

    language: str = "en"
    """ISO 639 code of the corpus's language."""
    fold_accents: bool | None = None
    """None: on for English only."""
    mode: str = "default"
    """'default' or 'none' (whitespace collapse only)."""
    chars_to_ignore: str = ""
    """Characters deleted from the raw transcript (HF's --chars_to_ignore); whitespace here separates entries."""

    def __post_init__(self) -> None:
        problems = settings_problems(self.language, self.mode)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def folds_accents(self) -> bool:
        return self.language == "en" if self.fold_accents is None else self.fold_accents

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(recorded: dict[str, Any]) -> TextNormalization:
        """The settings ``to_dict`` wrote (a manifest's record); raises ValueError when they are not valid."""
        fold = recorded.get("fold_accents")
        if fold is not None and not isinstance(fold, bool):
            raise ValueError(f"fold_accents {fold!r} is not true, false or null")
        return TextNormalization(
            language=str(recorded.get("language", "en")),
            fold_accents=fold,
            mode=str(recorded.get("mode", "default")),
            chars_to_ignore=str(recorded.get("chars_to_ignore", "")),
        )

    def same_effect(self, other: TextNormalization) -> bool:
        """True when both normalise every transcript alike (fold_accents None is the language's default; the
        order and spacing of chars_to_ignore do not matter)."""
        return (
            self.language == other.language
            and self.mode == other.mode
            and (self.mode == "none" or self.folds_accents == other.folds_accents)
            and set(_deletions(self.chars_to_ignore)) == set(_deletions(other.chars_to_ignore))
        )


ENGLISH = TextNormalization()


def normalize(text: str, normalization: TextNormalization = ENGLISH) -> str:
    """Normalise one transcript (see the module docstring); idempotent."""
    if normalization.chars_to_ignore:
        text = text.translate(_deletions(normalization.chars_to_ignore))
    if normalization.mode == "none":
        return " ".join(text.replace(WORD_DELIMITER, " ").split())
    if normalization.language == "en" and normalization.folds_accents:
        text = _normalize_ascii_english(text)
        if normalization.chars_to_ignore:  # again, as below; the path's output is otherwise a fixed point of it
            text = _normalize_ascii_english(text.translate(_deletions(normalization.chars_to_ignore)))
        return text
    separator = " " if writes_words(normalization.language) else ""
    text = text.translate(_APOSTROPHES)
    if normalization.folds_accents:
        text = unicodedata.normalize("NFKD", text)  # before spelling: compatibility digits (², ½) are digits
    else:
        text = _FULL_WIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    text = re.sub(r"\d+", functools.partial(_spell, normalization.language, separator), text)
    text = unicodedata.normalize("NFC", text)
    if normalization.language in DOTLESS_I:
        text = text.translate(_DOTLESS_I_LOWER)
    text = text.lower()
    if normalization.folds_accents:
        # After lower(), which may add marks (İ -> i + U+0307 outside Turkish); before would leave them.
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = unicodedata.normalize("NFC", text)
    text = text.translate(_KEPT_CHARACTERS[separator])
    if normalization.chars_to_ignore:  # again: spelled numbers and lower case must not bring them back
        text = text.translate(_deletions(normalization.chars_to_ignore))
    text = _WORD_EDGE_MARKS.sub(" ", text)
    # Deleting a tatweel or format character can bring a letter and its mark together: compose them once more.
    return unicodedata.normalize("NFC", " ".join(text.split()))


# --------------------------------------------------------------------------------------- characters kept


class _CharacterTable(dict[int, str]):
    """str.translate table for step 7 of the module docstring, filled on first sight of each character (translate
    runs in C; a character's Unicode category is looked up once per process, not once per occurrence)."""

    def __init__(self, separator: str) -> None:
        super().__init__()
        self.separator = separator

    def __missing__(self, code: int) -> str:
        char = chr(code)
        category = unicodedata.category(char)
        if char in _WORD_INTERNAL or category[0] in "LMN":
            kept = "" if char == _TATWEEL else char
        elif category == "Cf":
            kept = ""
        elif char.isspace():
            kept = " "
        else:
            kept = self.separator
        self[code] = kept
        return kept


_KEPT_CHARACTERS = {" ": _CharacterTable(" "), "": _CharacterTable("")}
_TATWEEL = "\u0640"
# Kept inside words, dropped at their edges: the apostrophe, Hebrew geresh and gershayim (ג׳, צה״ל), and the
# zero-width non-joiner and joiner of Persian and Indic spelling (می‌خواهم).
_WORD_INTERNAL = "'\u05f3\u05f4\u200c\u200d"
_WORD_EDGE_MARKS = re.compile(
    f"(?<![^\\s{_WORD_INTERNAL}])[{_WORD_INTERNAL}]+|[{_WORD_INTERNAL}]+(?![^\\s{_WORD_INTERNAL}])"
)
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_FULL_WIDTH = re.compile("[\uff00-\uffef]+")


@functools.lru_cache(maxsize=64)
def _deletions(chars_to_ignore: str) -> dict[int, None]:
    return {ord(c): None for c in chars_to_ignore if not c.isspace()}


# --------------------------------------------------------------------------------------- numbers


@functools.lru_cache(maxsize=64)
def _speller(language: str) -> Callable[[int], str] | None:
    """Non-negative integer -> words in ``language``, or None where no speller exists (digits are kept)."""
    if language == "en":
        return number_words
    name = _NUM2WORDS_NAMES.get(language, language)
    if name not in CONVERTER_CLASSES or name in _NUM2WORDS_BROKEN:
        return None
    return functools.partial(num2words, lang=name)


def _spell(language: str, separator: str, match: re.Match[str]) -> str:
    return _spelled(language, match.group(0), separator)


@functools.lru_cache(maxsize=65536)  # num2words takes ~0.1 ms a number; corpora repeat the same few numbers
def _spelled(language: str, digits: str, separator: str) -> str:
    speller = _speller(language)
    if speller is None:
        return digits
    if len(digits) <= 15:  # longer: an id or a phone number, not a quantity, read digit by digit
        try:
            return separator + speller(int(digits)) + separator
        except OverflowError:  # num2words' Kannada and Telugu stop below 10**10
            pass
    return separator + separator.join(speller(int(c)) for c in digits) + separator


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


def _spell_ascii_digits(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) > 15:  # an id or a phone number, not a quantity: read digit by digit
        return " " + " ".join(_ONES[int(c)] for c in digits) + " "
    return " " + number_words(int(digits)) + " "


def _normalize_ascii_english(text: str) -> str:
    """English with accents folded: the output alphabet is a-z and ' (the path every English corpus took before
    other languages were supported; its results must not change, tests/test_text.py holds it to that)."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[0-9]+", _spell_ascii_digits, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'+|'+(?![a-z])", " ", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------------------- transcript length

# How many characters of an alphabetic script one character of a script is worth in speaking time, by the start of
# its Unicode name: a Han character is a syllable and a morpheme (Mandarin: ~4-5/s normal, ~7/s fast), a kana or
# Hangul block or an Ethiopic/Cherokee/Canadian/Yi/Vai character a syllable or mora (Japanese ~8-10 morae/s fast,
# Korean ~7-8 syllables/s). An English-like alphabet runs ~14 characters/s normal, ~19 fast, with spaces; the
# weights keep the default 25/s cap about 1.7x above fast speech in every script (12.5/s of Han, 20/s of kana).
_SCRIPT_WEIGHTS = (
    ("CJK UNIFIED IDEOGRAPH", 2.0),
    ("CJK COMPATIBILITY IDEOGRAPH", 2.0),
    ("YI SYLLABLE", 2.0),
    ("HIRAGANA", 1.25),
    ("KATAKANA", 1.25),
    ("HANGUL SYLLABLE", 1.25),
    ("ETHIOPIC SYLLABLE", 1.25),
    ("CHEROKEE", 1.25),
    ("CANADIAN SYLLABICS", 1.25),
    ("VAI SYLLABLE", 1.25),
)


@functools.lru_cache(maxsize=65536)
def _speaking_weight(char: str) -> float:
    name = unicodedata.name(char, "")
    return next((weight for prefix, weight in _SCRIPT_WEIGHTS if name.startswith(prefix)), 1.0)


def characters_per_second_limit(text: str, max_chars_per_second: float) -> float:
    """The characters-per-second cap for this normalised transcript, given the cap for alphabetic scripts
    (prepare's ``--max_chars_per_second``; 0 disables the check and stays 0).

    A transcript is too long for its audio when ``len(text) > limit * duration``. In syllabic and logographic
    scripts one character takes longer to say (see _SCRIPT_WEIGHTS), so their cap is lower by the weighted mean of
    the transcript's characters: Chinese at 25/s for alphabets gets 12.5/s, Japanese kana 20/s, English, Russian or
    Hindi 25/s; mixed text (Japanese kanji and kana, code-switching) gets the mix.
    """
    if max_chars_per_second <= 0 or not text:
        return max_chars_per_second
    weighted = sum(_speaking_weight(c) for c in text)
    if weighted == len(text):  # alphabetic text: the cap itself, not cap * n / n, which may round off it
        return max_chars_per_second
    return max_chars_per_second * len(text) / weighted
