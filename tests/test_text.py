"""Transcript normalisation in every language and the character vocabulary of the CTC head."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from xlsr_dist import text
from xlsr_dist.decoding import greedy
from xlsr_dist.text import TextNormalization


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


# ------------------------------------------------------------------------------------- English unchanged

_ORACLE_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen \
seventeen eighteen nineteen".split()
_ORACLE_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORACLE_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]


def _oracle_number_words(n: int) -> str:
    if n < 20:
        return _ORACLE_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _ORACLE_TENS[tens] + ("" if ones == 0 else " " + _ORACLE_ONES[ones])
    for scale, name in _ORACLE_SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            words = f"{_oracle_number_words(head)} {name}"
            return words if rest == 0 else f"{words} {_oracle_number_words(rest)}"
    raise AssertionError("unreachable")


def _oracle_spell_digits(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) > 15:
        return " " + " ".join(_ORACLE_ONES[int(c)] for c in digits) + " "
    return " " + _oracle_number_words(int(digits)) + " "


def _oracle_normalize(s: str) -> str:
    """xlsr_dist.text.normalize as it was before other languages (commit 1864b0e), copied verbatim."""
    s = unicodedata.normalize("NFKD", s.translate(str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})))
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = re.sub(r"[0-9]+", _oracle_spell_digits, s)
    s = re.sub(r"[^a-z' ]+", " ", s)
    s = re.sub(r"(?<![a-z])'+|'+(?![a-z])", " ", s)
    return " ".join(s.split())


_ENGLISH_SAMPLES = [
    "Hello, World!",
    "Don’t stop",
    "'quoted' words'",
    "I have 42 apples",
    "In 1999.",
    "Café  naïve",
    "你好",
    "It's 5 o'clock",
    "  spaced   out  ",
    "Ünïcödé",
    "Straße über Ärger",
    "İstanbul ılık",
    "Ça coûte 42 €",
    "Привет, мир!",
    "नमस्ते दुनिया",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
    "rock 'n' roll, ‘twas `tick´ d''oh '' ' x'",
    "Call 0123456789012345 now; 999999999999999 or 1000000000000000000",
    "1st 2nd 3rd 4th 100% 3.14 1,000,000 -5 +7 x²",
    "ﬁne ＦＵＬＬ ｗｉｄｔｈ １２ Ⅻ ½ ① ™ ©",
    "tab\there\nnew\r\nline\u00a0nbsp\u2009thin",
    "e-mail well-known mother-in-law — dash – en",
    "Zoë Brontë façade jalapeño Øresund Łódź Dvořák",
    "\u200bzero\u200cwidth\u200djoin\ufeffbom\u00adsoft",
    "naïve café résumé coöperate señor",
    "ǅemal ǈ ǋ Ǳ ﬀ ﬃ ĳ",
    "ΟΔΟΣ Αθηνών, Ελλάδα",
    "",
    "   ",
    "'''",
    "a|b [UNK] [PAD]",
]


def test_english_results_are_exactly_the_previous_ones() -> None:
    rng = np.random.default_rng(0)
    alphabet = list("aAzZ '’‘`´-.,!?0123456789éÉüÜßñçøıİ你ЖжदिﬁＡ１²\t\n|") + ["\u0301", "\u200c", "\u05f4"]
    randoms = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 24)))) for _ in range(5000)]
    english = [TextNormalization(), TextNormalization("en"), TextNormalization("en", fold_accents=True)]
    for sample in _ENGLISH_SAMPLES + randoms:
        expected = _oracle_normalize(sample)
        assert text.normalize(sample) == expected, sample
        for normalization in english:
            assert text.normalize(sample, normalization) == expected, (sample, normalization)


# ------------------------------------------------------------------------------------- every language

LANGUAGE_TABLE = [
    # (language, fold_accents, input, expected)
    ("de", None, "Straße über Ärger, 42 Äpfel.", "straße über ärger zweiundvierzig äpfel"),
    ("de", True, "Straße über Ärger", "straße uber arger"),
    ("tr", None, "İstanbul ılık, IRMAK!", "istanbul ılık ırmak"),
    ("az", None, "İlham IŞIQ", "ilham ışıq"),
    ("ru", None, "Привет, мир! В 2024 году.", "привет мир в две тысячи двадцать четыре году"),
    ("uk", None, "М’ясо коштує 42 гривні", "м'ясо коштує сорок два гривні"),
    ("hi", None, "नमस्ते दुनिया। मैं 42 साल का हूँ।", "नमस्ते दुनिया मैं 42 साल का हूँ"),
    ("hi", None, "४२ रुपये", "४२ रुपये"),
    ("ar", None, "السَّلامُ عَلَيْكُم، كَيْفَ الحـــال؟", "السَّلامُ عَلَيْكُم كَيْفَ الحال"),
    ("ar", True, "السَّلامُ عَلَيْكُم، كَيْفَ الحـــال؟", "السلام عليكم كيف الحال"),
    ("ar", None, "عندي 42 كتاب", "عندي اثنان و أربعون كتاب"),
    ("fa", None, "می\u200cخواهم ۴۲ کتاب بخوانم.", "می\u200cخواهم چهل و دو کتاب بخوانم"),
    ("he", None, "שָׁלוֹם, עוֹלָם! צה״ל ג׳ירפה", "שָׁלוֹם עוֹלָם צה״ל ג׳ירפה"),
    ("zh", None, "你好世界", "你好世界"),
    ("zh", None, "你好，世界！我有3个苹果。", "你好世界我有3个苹果"),
    ("zh", None, "我用 iPhone（手机）", "我用 iphone手机"),
    ("ja", None, "東京は「晴れ」です。3時にｶﾞｰﾃﾞﾝで。", "東京は晴れです三時にガーデンで"),
    ("th", None, "สวัสดีครับ, ผมมี 3 ตัว", "สวัสดีครับ ผมมี สาม ตัว"),
    ("ko", None, "안녕하세요, 세계! 42", "안녕하세요 세계 사십이"),
    ("fr", None, "Ça coûte 42 € !", "ça coûte quarante deux"),
    (
        "fr",
        None,
        "L'homme « peut-être » d’accord 1999",
        "l'homme peut être d'accord mille neuf cent quatre vingt dix neuf",
    ),
    ("es", None, "¿Cuánto cuesta? 42 euros.", "cuánto cuesta cuarenta y dos euros"),
    ("vi", None, "Tie\u0302\u0301ng Vie\u0323\u0302t có 42 chữ.", "tiếng việt có bốn mươi hai chữ"),
    ("el", None, "ΟΔΟΣ Αθηνών", "οδος αθηνών"),
    ("en", False, "Café 你好 Straße 42", "café 你好 straße forty two"),
]


@pytest.mark.parametrize(("language", "fold_accents", "raw", "expected"), LANGUAGE_TABLE)
def test_normalisation_per_language(language: str, fold_accents: bool | None, raw: str, expected: str) -> None:
    normalization = TextNormalization(language, fold_accents)
    assert text.normalize(raw, normalization) == expected
    assert text.normalize(expected, normalization) == expected  # idempotent: training re-normalises


def test_the_issues_examples_keep_their_letters() -> None:
    assert text.normalize("Привет, мир!", TextNormalization("ru")) == "привет мир"
    assert text.normalize("नमस्ते दुनिया", TextNormalization("hi")) == "नमस्ते दुनिया"
    assert text.normalize("你好世界", TextNormalization("zh")) == "你好世界"
    assert text.normalize("Straße über Ärger", TextNormalization("de")) == "straße über ärger"
    assert text.normalize("İstanbul ılık", TextNormalization("tr")) == "istanbul ılık"
    assert text.normalize("Ça coûte 42 €", TextNormalization("fr")) == "ça coûte quarante deux"


def test_marks_of_abugidas_and_harakat_survive_and_output_is_nfc() -> None:
    for language, raw in [("hi", "हिन्दी क्षेत्र नहीं"), ("th", "ภาษาไทยที่นี่"), ("ar", "كَتَبَ مُحَمَّدٌ"), ("ta", "தமிழ் நாடு")]:
        out = text.normalize(raw, TextNormalization(language))
        marks = [c for c in raw if unicodedata.category(c).startswith("M")]
        assert marks and [c for c in out if unicodedata.category(c).startswith("M")] == marks
    out = text.normalize("Vie\u0323\u0302t Nam", TextNormalization("vi"))
    assert out == unicodedata.normalize("NFC", out) == "việt nam"


def test_greek_lower_case_has_final_sigma() -> None:
    assert text.normalize("ΟΔΟΣ", TextNormalization("el")) == "οδο\u03c2"


def test_every_language_is_idempotent_on_mixed_text() -> None:
    rng = np.random.default_rng(1)
    alphabet = list("aZ '’-.,!?0١४٤３éÜßıİIЖдिक्ष你好、。「」ｶﾞ한글ไทย\u064e\u0640|\t") + [
        "\u0301",
        "\u200c",
        "\u05f4",
        "\u05d0",
    ]
    for language in ["de", "tr", "ru", "hi", "ar", "fa", "he", "zh", "ja", "th", "fr", "vi", "en"]:
        for fold_accents, chars_to_ignore in [(None, ""), (True, ""), (False, ",a")]:
            normalization = TextNormalization(language, fold_accents, chars_to_ignore=chars_to_ignore)
            for _ in range(300):
                once = text.normalize("".join(rng.choice(alphabet, size=int(rng.integers(0, 20)))), normalization)
                assert text.normalize(once, normalization) == once, (language, fold_accents, once)
                assert "|" not in once and once == " ".join(once.split())


def test_languages_without_word_spaces() -> None:
    assert not any(text.writes_words(lang) for lang in ["zh", "ja", "th", "lo", "km", "my", "yue", "bo"])
    assert all(text.writes_words(lang) for lang in ["en", "de", "tr", "ru", "hi", "ar", "ko", "vi"])


# ------------------------------------------------------------------------------------- settings


def test_chars_to_ignore_deletes_each_listed_character() -> None:
    french = TextNormalization("fr", chars_to_ignore=", ' -")
    # HF's meaning: the characters are removed, not turned into spaces; listing spaces deletes none.
    assert text.normalize("Ça coûte, l'homme peut-être", french) == "ça coûte lhomme peutêtre"
    # Literal characters, not a regex class (HF's unescaped ",-;" would be a range covering the digits).
    assert text.normalize("a,b-c;d 7", TextNormalization("de", chars_to_ignore=",-;")) == "abcd sieben"
    assert text.normalize("Hello, World!", TextNormalization("en", chars_to_ignore="lo")) == "he wrd"


def test_mode_none_only_collapses_whitespace() -> None:
    already = TextNormalization("fr", mode="none")
    assert text.normalize("  Déjà  Normalisé,\t42 ", already) == "Déjà Normalisé, 42"
    assert text.normalize("a|b", already) == "a b"  # | is the word delimiter, never a character
    assert text.normalize("a.b c", TextNormalization("fr", mode="none", chars_to_ignore=".")) == "ab c"


def test_bad_settings_name_their_flag() -> None:
    assert text.settings_problems("en", "default") == []
    assert text.settings_problems("tur", "none") == []
    problems = text.settings_problems("zh-CN", "nfkc")
    assert problems == [
        "--language: 'zh-CN' is not an ISO 639 language code (2-3 lower-case letters: en, de, tr, zh); "
        "for 'zh-CN' give 'zh'",
        "--text_normalization: 'nfkc' is not one of 'default', 'none'",
    ]
    assert text.settings_problems("EN", "default")[0].endswith("for 'EN' give 'en'")
    assert text.settings_problems("english", "default")[0].endswith("(2-3 lower-case letters: en, de, tr, zh)")
    with pytest.raises(ValueError, match="--language: 'e1'"):
        TextNormalization("e1")


def test_fold_accents_defaults_to_english_only() -> None:
    assert TextNormalization("en").folds_accents and not TextNormalization("de").folds_accents
    assert TextNormalization("de", fold_accents=True).folds_accents
    assert not TextNormalization("en", fold_accents=False).folds_accents
    record = TextNormalization("tr", None, "default", ",.").to_dict()
    assert record == {"language": "tr", "fold_accents": None, "mode": "default", "chars_to_ignore": ",."}
    assert TextNormalization(**json.loads(json.dumps(record))) == TextNormalization("tr", chars_to_ignore=",.")


# ------------------------------------------------------------------------------------- transcript length


def test_characters_per_second_limit_per_script() -> None:
    assert text.characters_per_second_limit("hello world", 25.0) == 25.0
    assert text.characters_per_second_limit("привет мир", 25.0) == 25.0
    assert text.characters_per_second_limit("नमस्ते दुनिया", 25.0) == 25.0
    assert text.characters_per_second_limit("你好世界", 25.0) == 12.5
    assert text.characters_per_second_limit("ありがとう", 25.0) == 20.0
    assert text.characters_per_second_limit("안녕하세요", 25.0) == 20.0
    assert 12.5 < text.characters_per_second_limit("東京はとても", 25.0) < 20.0  # kanji and kana mix
    assert text.characters_per_second_limit("你好", 0.0) == 0.0  # 0 disables the check
    assert text.characters_per_second_limit("", 25.0) == 25.0


def test_characters_per_second_limit_keeps_fast_speech_and_rejects_impossible_transcripts() -> None:
    def too_long(transcript: str, seconds: float) -> bool:
        return len(transcript) > text.characters_per_second_limit(transcript, 25.0) * seconds

    fast_mandarin = "我" * 80  # 8 syllables a second for 10 s: fast but real
    assert not too_long(fast_mandarin, 10.0)
    # 20 Han characters a second passed the alphabetic 25/s cap; no one says 20 syllables a second.
    assert too_long("我" * 200, 10.0) and 200 <= 25.0 * 10.0
    fast_japanese = "ありがとうございます" * 12  # 12 morae a second for 10 s
    assert not too_long(fast_japanese, 10.0)
    assert not too_long("the quick brown fox jumps over the lazy dog " * 5, 10.0)  # 22 characters a second
    assert too_long("the quick brown fox jumps over the lazy dog " * 6, 10.0)


# ------------------------------------------------------------------------------------- vocabulary


def test_vocab_uses_word_delimiter_and_pad_is_last() -> None:
    vocab = text.build_vocab(["ab c", "ca'b"])
    assert list(vocab) == ["'", "a", "b", "c", "|", "[UNK]", "[PAD]"]
    assert vocab[text.PAD] == len(vocab) - 1
    assert text.encode("ab c", vocab) == [1, 2, 4, 3]
    assert text.encode("z", vocab) == [vocab[text.UNK]]


def test_vocab_of_any_script_round_trips(tmp_path: Path) -> None:
    corpus = [
        text.normalize("नमस्ते दुनिया", TextNormalization("hi")),
        text.normalize("你好，世界！", TextNormalization("zh")),
        text.normalize("Straße über 𝒳 a|b", TextNormalization("de")),
    ]
    vocab = text.build_vocab(corpus + ["x|y"])
    assert sorted(vocab.values()) == list(range(len(vocab)))  # a literal | does not take a second index
    assert {"न", "्", "े", "你", "ß", "ü"} <= set(vocab) and " " not in vocab
    assert list(vocab)[-3:] == ["|", "[UNK]", "[PAD]"]
    for line in corpus:
        ids = text.encode(line, vocab)
        assert vocab[text.UNK] not in ids
        with_blanks = [i for label in ids for i in (label, vocab[text.PAD])]  # what CTC emits between repeats
        assert greedy.ctc_greedy_decode(with_blanks, text.inverse(vocab), vocab[text.PAD]) == line
    text.save_vocab(vocab, tmp_path / "vocab.json")
    assert "你" in (tmp_path / "vocab.json").read_text(encoding="utf-8")  # UTF-8 whatever the locale
    assert text.load_vocab(tmp_path / "vocab.json") == vocab


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
    assert greedy.ctc_greedy_decode(ids, inv, blank) == "hello world"


def test_ctc_min_frames_counts_blanks_between_repeats() -> None:
    assert text.ctc_min_frames([1, 2, 3]) == 3
    assert text.ctc_min_frames([1, 1, 2, 2, 2]) == 8
