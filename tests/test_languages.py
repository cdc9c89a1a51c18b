"""Every language XLS-R speaks, through the commands a user runs: one short synthetic corpus per script (German,
Turkish, Russian, Hindi, Chinese, Arabic; real sentences with punctuation, digits and case, synthetic audio).

prepare keeps every utterance and records the language; training refuses a corpus prepared for another language;
the vocabulary is the corpus's own characters; 2 ranks train each language (CER first where words have no
spaces); export's tokenizer decodes the vocabulary back to the same characters and transcribe prints the script.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests._dist import ROOT, base_env, run_launcher, run_module, venv_bin
from tests._net import free_port
from tests._runs import metrics_by_step
from xlsr_dist import compare, export, prepare, text, transcribe
from xlsr_dist.config import ConfigError, DataConfig, best_model_metric, build_config, primary_metric
from xlsr_dist.data import language, shards
from xlsr_dist.data.catalog import build_catalog, filter_metadata
from xlsr_dist.data.recipes.items import PrepareError
from xlsr_dist.data.skip_reasons import TRANSCRIPT_TOO_DENSE
from xlsr_dist.data.vocabulary import split_vocabulary
from xlsr_dist.evaluation import run as evaluate_cli
from xlsr_dist.text import TextNormalization
from xlsr_dist.training.loop import eval_line
from xlsr_dist.training.setup import load_or_build_vocab

SR = 16000

# Per language: (transcript as a corpus has it, what prepare must make of it). The first EVAL_UTTERANCES also form
# the eval split (other recordings of the same sentences).
CORPORA: dict[str, list[tuple[str, str]]] = {
    "de": [
        ("Straße über Ärger?", "straße über ärger"),
        ("Ich habe 42 Äpfel gekauft.", "ich habe zweiundvierzig äpfel gekauft"),
        ("Grüß Gott, Frau Müller!", "grüß gott frau müller"),
        ("Das kostet 3 Euro.", "das kostet drei euro"),
        ("Wie geht’s dir heute?", "wie geht's dir heute"),
        ("Der Zug fährt um 7 Uhr.", "der zug fährt um sieben uhr"),
    ],
    "tr": [
        ("İstanbul ılık.", "istanbul ılık"),
        ("IŞIK ve İĞNE", "ışık ve iğne"),
        ("Bugün 5 kitap okudum.", "bugün beş kitap okudum"),
        ("Ankara'ya gidiyorum!", "ankara'ya gidiyorum"),
        ("Çok güzel, değil mi?", "çok güzel değil mi"),
        ("Saat 12'de buluşalım.", "saat oniki de buluşalım"),
    ],
    "ru": [
        ("Привет, мир!", "привет мир"),
        ("Мне 25 лет.", "мне двадцать пять лет"),
        ("Ёлка стоит в углу.", "ёлка стоит в углу"),
        ("Это «хорошая» идея — правда?", "это хорошая идея правда"),
        ("Москва – столица России.", "москва столица россии"),
        ("У меня 3 кошки.", "у меня три кошки"),
    ],
    "hi": [
        ("नमस्ते दुनिया!", "नमस्ते दुनिया"),
        ("मेरा नाम राम है।", "मेरा नाम राम है"),
        ("आज 5 बजे मिलते हैं।", "आज 5 बजे मिलते हैं"),
        ("क्या आप ठीक हैं?", "क्या आप ठीक हैं"),
        ("भारत एक बड़ा देश है।", "भारत एक बड़ा देश है"),
        ("हिंदी भाषा सुंदर है।", "हिंदी भाषा सुंदर है"),
    ],
    "zh": [
        ("你好，世界！", "你好世界"),
        ("我有3个苹果。", "我有3个苹果"),
        ("今天天气很好。", "今天天气很好"),
        ("ＡＢＣ是英文字母。", "abc是英文字母"),
        ("我们明天见吧？", "我们明天见吧"),
        ("中国有很多人口，对吗？", "中国有很多人口对吗"),
    ],
    "ar": [
        ("مرحبا بالعالم!", "مرحبا بالعالم"),
        ("كَتَبَ الوَلَدُ الدَّرْسَ.", "كَتَبَ الوَلَدُ الدَّرْسَ"),
        ("عندي 3 كتب.", "عندي ثلاثة كتب"),
        ("هل أنت بخير؟", "هل أنت بخير"),
        ("الســـلام عليكم", "السلام عليكم"),
        ("أحب القراءة، والكتابة.", "أحب القراءة والكتابة"),
    ],
}
EVAL_UTTERANCES = 2
# The Unicode name every letter of the language's script starts with (transcribe must print them).
SCRIPTS = {"de": "LATIN", "tr": "LATIN", "ru": "CYRILLIC", "hi": "DEVANAGARI", "zh": "CJK UNIFIED", "ar": "ARABIC"}


def _seconds(normalised: str, language_code: str) -> float:
    """About how long the sentence takes to say: ~15 letters/s, ~5 Han characters/s; 1-2 s as the corpus is short."""
    rate = 5.0 if language_code == "zh" else 15.0
    return min(2.0, max(1.0, len(normalised) / rate))


def _speech_like(normalised: str, seconds: float, seed: int) -> np.ndarray:
    """One tone burst per character (its pitch from the code point), silence for spaces, a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    wave = 0.003 * rng.standard_normal(n)
    per_char = n // len(normalised)
    t = np.arange(per_char) / SR
    envelope = np.sin(np.pi * np.arange(per_char) / per_char)
    for i, c in enumerate(normalised):
        if c != " ":
            wave[i * per_char : (i + 1) * per_char] += 0.3 * envelope * np.sin(2 * np.pi * (150 + ord(c) % 40 * 20) * t)
    return wave.astype(np.float32)


def write_corpus(root: Path, language_code: str) -> Path:
    """A folder-layout corpus: wav/*.wav, train.csv (every sentence) and eval.csv (the first EVAL_UTTERANCES, other
    recordings); returns its directory."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for split, sentences in (("train", CORPORA[language_code]), ("eval", CORPORA[language_code][:EVAL_UTTERANCES])):
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            table = csv.writer(f)
            table.writerow(["path", "sentence"])
            for i, (raw, normalised) in enumerate(sentences):
                name = f"wav/{split}-{i}.wav"
                seed = i + (1000 if split == "eval" else 0)
                sf.write(root / name, _speech_like(normalised, _seconds(normalised, language_code), seed), SR)
                table.writerow([name, raw])
    return root


def _prepare_argv(corpus: Path, out: Path, language_code: str, *extra: str) -> list[str]:
    return [
        "--layout",
        "folder",
        "--language",
        language_code,
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--split",
        "train",
        "eval",
        "--num_shards",
        "2",
        "--num_workers",
        "1",
        "--no_progress",
        *extra,
    ]


def prepared(tmp: Path, language_code: str, *extra: str) -> tuple[Path, list[dict[str, Any]]]:
    """(output root with train/ and eval/, the reports) from prepare's CLI entry point, in this process."""
    out = tmp / f"{language_code}-shards"
    reports = prepare.run(
        _prepare_argv(write_corpus(tmp / f"{language_code}-corpus", language_code), out, language_code, *extra)
    )
    return out, reports


def split_texts(split_dir: Path) -> dict[str, str]:
    meta = shards.read_metadata(shards.list_shards(split_dir))
    return dict(zip(meta.column("id").to_pylist(), meta.column("text").to_pylist()))


def _frames(num_samples: int) -> int:
    return num_samples // 320  # wav2vec2's 20 ms frames


# --------------------------------------------------------------------------------------------------------------
# prepare, the vocabulary and the stream


@pytest.mark.parametrize("language_code", list(CORPORA))
def test_prepare_keeps_every_utterance_normalised_for_its_language(tmp_path: Path, language_code: str) -> None:
    out, reports = prepared(tmp_path, language_code)
    assert [(r["split"], r["skipped"]) for r in reports] == [("train", []), ("eval", [])]
    expected = [normalised for _, normalised in CORPORA[language_code]]
    assert sorted(split_texts(out / "train").values()) == sorted(expected)
    assert sorted(split_texts(out / "eval").values()) == sorted(expected[:EVAL_UTTERANCES])

    manifest = shards.read_manifest(out / "train")
    assert manifest[language.MANIFEST_KEY] == TextNormalization(language_code).to_dict()
    assert language.split_normalization(str(out / "train")) == TextNormalization(language_code)
    characters = set("".join(expected))
    assert set(manifest["vocabulary"]) == characters

    # The vocabulary is the corpus's own characters in its script: nothing maps to [UNK].
    data = DataConfig(language=language_code)
    vocab = load_or_build_vocab(str(out / "train"), tmp_path / "run", False, data.normalization())
    assert set(vocab) == (characters - {" "}) | {text.WORD_DELIMITER, text.UNK, text.PAD}
    # The stream reads the transcripts as prepared: every utterance trains, its labels spell its transcript.
    catalog = build_catalog(str(out / "train"), vocab, data, _frames)
    assert len(catalog) == len(expected) and catalog.report == []
    inverse = text.inverse(vocab)
    texts = split_texts(out / "train")
    for i, uid in enumerate(catalog.ids):
        spelled = "".join(inverse[label] for label in catalog.labels(i)).replace(text.WORD_DELIMITER, " ")
        assert spelled == texts[uid]


def test_english_prepare_is_unchanged_and_older_corpora_read_as_english(tmp_path: Path) -> None:
    corpus = tmp_path / "en"
    (corpus / "wav").mkdir(parents=True)
    sf.write(corpus / "wav" / "a.wav", _speech_like("hello world", 1.0, 0), SR)
    (corpus / "train.csv").write_text('path,sentence\nwav/a.wav,"Café, 42 naïve!"\n', encoding="utf-8")
    [report] = prepare.run(["--input", str(corpus / "train.csv"), "--output", str(tmp_path / "out"), "--no_progress"])
    assert split_texts(tmp_path / "out" / "train") == {"wav/a.wav": "cafe forty two naive"}
    # The plan key of an English corpus is the one of versions before languages: their finished shards are kept.
    assert report["settings"] == {"version": 1, "max_duration_in_seconds": 30.0, "max_chars_per_second": 25.0}
    manifest = shards.read_manifest(tmp_path / "out" / "train")
    assert language.recorded(manifest) == text.ENGLISH
    del manifest[language.MANIFEST_KEY]
    assert language.recorded(manifest) == text.ENGLISH  # an older prepare's manifest


def _vocabulary_from_every_transcript(split_dir: Path, normalization: TextNormalization) -> dict[str, int]:
    """What training start-up computed before the manifest's character set was used: every transcript normalised."""
    return text.build_vocab(text.normalize(t, normalization) for t in split_texts(split_dir).values())


def _shards_opened_by(build: Callable[[], dict[str, int]]) -> tuple[dict[str, int], int]:
    shards.clear_cache()
    before = shards.IO_STATS["files_opened"]
    vocab = build()
    return vocab, shards.IO_STATS["files_opened"] - before


@pytest.mark.parametrize(
    ("language_code", "extra"),
    [("en", ()), ("de", ("--chars_to_ignore", "ü", "--fold_accents")), ("tr", ()), ("zh", ())],
)
def test_the_vocabulary_comes_from_the_manifest_identical_to_reading_every_transcript(
    tmp_path: Path, language_code: str, extra: tuple[str, ...]
) -> None:
    if language_code == "en":  # German sentences prepared the English way: accents folded, numbers in English
        out = tmp_path / "out"
        prepare.run(_prepare_argv(write_corpus(tmp_path / "corpus", "de"), out, "en"))
    else:
        out, _ = prepared(tmp_path, language_code, *extra)
    train = out / "train"
    normalization = language.split_normalization(str(train))
    assert normalization is not None
    expected = _vocabulary_from_every_transcript(train, normalization)
    vocab, opened = _shards_opened_by(lambda: split_vocabulary(str(train), normalization))
    assert list(vocab.items()) == list(expected.items())  # the same ids, in the same order
    assert opened == 0  # no rank reads the transcripts at start-up


def test_a_corpus_without_a_usable_manifest_character_set_reads_every_transcript(tmp_path: Path) -> None:
    out, _ = prepared(tmp_path, "de")
    train = out / "train"
    normalization = TextNormalization("de")
    expected = _vocabulary_from_every_transcript(train, normalization)
    manifest_path = train / shards.MANIFEST
    original = json.loads(manifest_path.read_text())

    def read_with(manifest: dict[str, Any] | None) -> tuple[dict[str, int], int]:
        if manifest is None:
            manifest_path.unlink(missing_ok=True)
        else:
            manifest_path.write_text(json.dumps(manifest))
        return _shards_opened_by(lambda: split_vocabulary(str(train), normalization))

    older = {k: v for k, v in original.items() if k != "vocabulary"}  # a prepare that recorded no character set
    unrecorded = {k: v for k, v in original.items() if k != language.MANIFEST_KEY}  # nor a normalisation
    other_shards = {**original, "shards": [{**s, "bytes": s["bytes"] + 1} for s in original["shards"]]}
    # A wrong character set proves which source each answer came from.
    lying = {"vocabulary": "xyz"}
    for case in (older, unrecorded, other_shards):
        vocab, opened = read_with({**case, **lying} if "vocabulary" in case else case)
        assert list(vocab.items()) == list(expected.items()) and opened == len(original["shards"])
    vocab, opened = read_with(None)  # shards without a manifest
    assert list(vocab.items()) == list(expected.items()) and opened == len(original["shards"])
    # Another normalisation than the one recorded: the manifest's characters would not be the run's.
    read_with(original)
    folded = TextNormalization("de", fold_accents=True)
    vocab, opened = _shards_opened_by(lambda: split_vocabulary(str(train), folded))
    assert vocab == _vocabulary_from_every_transcript(train, folded) and opened == len(original["shards"])


def test_chars_to_ignore_and_no_normalisation_are_recorded_and_applied(tmp_path: Path) -> None:
    out, reports = prepared(tmp_path, "de", "--chars_to_ignore", "ü", "--fold_accents")
    assert all(r["skipped"] == [] for r in reports)
    # ü deleted (not folded), Ä folded, ß kept: it has no base letter.
    assert "straße ber arger" in split_texts(out / "train").values()
    recorded = language.split_normalization(str(out / "train"))
    assert recorded == TextNormalization("de", True, "default", "ü")
    assert reports[0]["settings"]["text_normalization"] == recorded.to_dict()

    out_none, _ = prepared(tmp_path / "none", "ru", "--text_normalization", "none")
    assert "Привет, мир!" in split_texts(out_none / "train").values()


def test_a_letter_in_chars_to_ignore_is_deleted_when_the_stream_reads_plain_text(tmp_path: Path) -> None:
    # Plain a-z text skips normalisation in the stream, unless chars_to_ignore deletes one of its letters.
    import pyarrow as pa

    meta = pa.table({"id": ["a"], "duration": [1.0], "text": ["box"], "shard": [0], "row": [0]})
    vocab = text.build_vocab(["box"])
    deleting_x = TextNormalization("en", chars_to_ignore="x")
    catalog = filter_metadata(meta, ["s"], vocab, 0.0, 30.0, _frames, deleting_x)
    assert catalog.labels(0) == [vocab["b"], vocab["o"]]
    catalog = filter_metadata(meta, ["s"], vocab, 0.0, 30.0, _frames, text.ENGLISH)
    assert catalog.labels(0) == [vocab["b"], vocab["o"], vocab["x"]]


def test_chinese_speech_rate_is_judged_per_character_of_its_script(tmp_path: Path) -> None:
    corpus = tmp_path / "zh"
    (corpus / "wav").mkdir(parents=True)
    sentence = "中国有很多人口对吗"  # 9 characters
    for name, seconds in (("fast", 1.0), ("impossible", 0.6)):  # 9/s: fast speech; 15/s: no one speaks that fast
        sf.write(corpus / "wav" / f"{name}.wav", _speech_like(sentence, seconds, 0), SR)
    (corpus / "train.csv").write_text(
        f"path,sentence\nwav/fast.wav,{sentence}\nwav/impossible.wav,{sentence}\n", encoding="utf-8"
    )
    [report] = prepare.run(
        ["--input", str(corpus / "train.csv"), "--output", str(tmp_path / "out"), "--language", "zh", "--no_progress"]
    )
    assert list(split_texts(tmp_path / "out" / "train")) == ["wav/fast.wav"]
    [skip] = report["skipped"]
    assert skip["id"] == "wav/impossible.wav" and skip["reason"] == TRANSCRIPT_TOO_DENSE
    assert "(> 12.5/s)" in skip["detail"]


def test_prepare_names_a_bad_language_flag(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"--language: 'de-DE' is not an ISO 639 language code.*give 'de'"):
        prepare.run(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--language", "de-DE"])


def test_eval_command_scores_a_set_the_way_it_was_prepared(tmp_path: Path) -> None:
    out, _ = prepared(tmp_path, "ru")
    vocab = load_or_build_vocab(str(out / "train"), tmp_path / "run", False, TextNormalization("ru"))
    paths, meta = evaluate_cli.read_set(str(out / "eval"))
    test_set = evaluate_cli.build_set("eval", str(out / "eval"), paths, meta, vocab, tmp_path / "eval")
    assert test_set.references == split_texts(out / "eval") and test_set.unrepresentable == {}


# --------------------------------------------------------------------------------------------------------------
# training start: the corpus's language against the run's


def _config(**values: Any) -> Any:
    return build_config({"architecture": "tiny", **values})


def test_a_corpus_trained_as_another_language_is_one_problem_naming_both(tmp_path: Path) -> None:
    out, _ = prepared(tmp_path, "ru")
    train, eval_ = str(out / "train"), str(out / "eval")
    assert language.training_problems(_config(train_data=train, eval_data=eval_, language="ru")) == []
    [train_problem, eval_problem] = language.training_problems(
        _config(train_data=train, eval_data=eval_, language="de")
    )
    assert train_problem.startswith(
        f"--language de: the training data at {train} was prepared for 'ru' (manifest.json)"
    )
    assert eval_problem.startswith(f"--language de: the eval data at {eval_} was prepared for 'ru'")
    assert "train with --language ru, or prepare the corpus again with --language de" in train_problem

    # The settings that change transcripts other than the language are checked too, each naming its flag.
    problems = language.training_problems(
        _config(train_data=train, eval_data=eval_, language="ru", fold_accents="true", chars_to_ignore="-")
    )
    assert [p.split(":")[0] for p in problems] == ["--fold_accents true", "--chars_to_ignore '-'"] * 2
    assert "prepared with --fold_accents false" in problems[0]
    # fold_accents unset is the language's default (off for Russian): the same as false.
    assert (
        language.training_problems(_config(train_data=train, eval_data=eval_, language="ru", fold_accents="false"))
        == []
    )


def test_older_and_demo_corpora_are_english(tmp_path: Path) -> None:
    out, _ = prepared(tmp_path, "de")
    manifest_path = out / "train" / shards.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest[language.MANIFEST_KEY]
    manifest_path.write_text(json.dumps(manifest))
    flags = {"train_data": str(out / "train"), "eval_data": str(out / "eval")}
    [problem] = language.training_problems(_config(**flags, language="de"))
    assert "was prepared for 'en'" in problem and "prepared by an older xlsr_dist" in problem

    [problem] = language.training_problems(_config(train_data="demo", language="zh"))
    assert problem.startswith("--language zh: --train_data demo is the English demo corpus")
    assert language.training_problems(_config(train_data="demo")) == []
    # Shards without a manifest record nothing: the flags say how they are read.
    manifest_path.unlink()
    assert language.training_problems(_config(**flags, language="de")) == []


# --------------------------------------------------------------------------------------------------------------
# metrics: CER first for languages written without spaces


def test_primary_metric_defaults_by_language_and_is_validated() -> None:
    assert primary_metric(_config()) == "eval_wer"
    assert primary_metric(_config(language="zh")) == "eval_cer"
    assert primary_metric(_config(language="th")) == "eval_cer"
    assert primary_metric(_config(language="zh", primary_metric="eval_loss")) == "eval_loss"
    with pytest.raises(ConfigError, match=r"--primary_metric: 'wer' is not one of eval_wer, eval_cer, eval_loss"):
        _config(primary_metric="wer")


def test_the_primary_metric_picks_the_best_checkpoint_unless_metric_for_best_model_says_otherwise() -> None:
    assert best_model_metric(_config()) == "eval_wer"
    assert best_model_metric(_config(language="zh")) == "eval_cer"
    assert best_model_metric(_config(language="zh", metric_for_best_model="loss")) == "loss"


def test_eval_line_puts_the_primary_metric_first_and_marks_a_wordless_wer() -> None:
    metrics = {"eval_loss": 1.5, "eval_wer": 1.0, "eval_cer": 0.25, "eval_samples": 16}
    assert eval_line(metrics, "eval_wer", True) == "loss 1.5000 wer 1.0000 cer 0.2500 (16 utterances)"
    assert (
        eval_line(metrics, "eval_cer", False)
        == "cer 0.2500 loss 1.5000 wer 1.0000 (n/a: no word spaces) (16 utterances)"
    )


def test_compare_table_leads_with_cer_when_it_is_primary() -> None:
    run = {"loss": {500: 2.0}, "eval_loss": {500: 1.0}, "eval_wer": {500: 1.0}, "eval_cer": {500: 0.3}}
    metrics = compare.compared_metrics("eval_cer")
    rows = compare.compare_rows(run, {}, {"logging_steps": "25", "eval_steps": "500"}, metrics)
    header = compare.format_table(rows).splitlines()[0].split()
    assert header[:3] == ["step", "eval_cer", "run"] and rows[0].cells["eval_cer"].run == 0.3
    assert compare.compared_metrics("eval_wer") == compare.COMPARED


def test_model_card_names_the_language() -> None:
    metrics = {"eval_loss": {10: 3.0}, "eval_wer": {10: 1.0}, "eval_cer": {10: 0.5}, "loss": {10: 4.0}}
    card = export.model_card("m", {"language": "zh", "primary_metric": "eval_cer"}, metrics).splitlines()
    assert card[:3] == ["---", "language: zh", "license: apache-2.0"]
    results = card.index("It achieves the following results on the evaluation set:")
    assert card[results + 1 : results + 4] == ["- Cer: 0.5", "- Loss: 3.0", "- Wer: 1.0"]
    assert any("Language: zh (ISO 639 code)." in line for line in card)
    english = export.model_card("m", {}, metrics).splitlines()  # a run from before --language
    assert english[1] == "language: en" and "- Cer: 0.5" == english[english.index("- Wer: 1.0") + 1]


# --------------------------------------------------------------------------------------------------------------
# end to end on 2 ranks


def _train_flags(shards_root: Path, out: Path, language_code: str, **overrides: Any) -> list[str]:
    flags: dict[str, Any] = {
        "architecture": "tiny",
        "language": language_code,
        "train_data": shards_root / "train",
        "eval_data": shards_root / "eval",
        "deepspeed": "ds_configs/zero2_fp32.json",
        "freeze_feature_encoder": "false",
        "mask_time_prob": 0.0,
        "global_batch_size": 2,
        # Barely moved from its random start: the model's outputs stay characters, not all blanks, so transcribe
        # has something in the script to print.
        "learning_rate": 1e-6,
        "warmup_steps": 0,
        "max_steps": 2,
        "logging_steps": 1,
        "eval_steps": 2,
        "save_steps": 2,
        "output_dir": out,
        "report_to": "none",
        "disable_tqdm": "true",
        "dataloader_num_workers": 0,
    }
    flags.update(overrides)
    return [part for k, v in flags.items() for part in (f"--{k}", str(v))]


def _assert_in_script(printed: str, vocab: dict[str, int], script: str) -> None:
    """Every character printed is one of the vocabulary's (an [UNK] output is printed as its token), and the
    script's letters are among them."""
    characters = printed.replace(text.UNK, "")
    assert set(characters) <= set(vocab) | {" "}, printed
    assert any(unicodedata.name(c, "").startswith(script) for c in characters), printed


@pytest.mark.slow
def test_six_languages_prepare_train_on_two_ranks_export_and_transcribe(tmp_path: Path, capsys: Any) -> None:
    # prepare as a user runs it, one corpus per language.
    roots = {}
    for code in CORPORA:
        roots[code] = tmp_path / f"{code}-shards"
        corpus = write_corpus(tmp_path / f"{code}-corpus", code)
        done = run_module(
            ["xlsr_dist.prepare", *_prepare_argv(corpus, roots[code], code)],
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("skipped 0 ->") == 2, done.stdout

    # One launch of 2 ranks trains every language in turn (one interpreter per rank: the imports are paid once).
    runs = {code: tmp_path / f"{code}-run" for code in CORPORA}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argvs = [
        _train_flags(roots[code], runs[code], code)
        if code != "zh"
        else _train_flags(roots[code], runs[code], code, report_to="mlflow", tracking_uri=uri, experiment_name="zh")
        for code in CORPORA
    ]
    (tmp_path / "runs.json").write_text(json.dumps({"ports": [free_port() for _ in argvs], "runs": argvs}))
    proc = run_launcher(
        [
            venv_bin("torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "tests._train_each",
            str(tmp_path / "runs.json"),
        ],
        timeout=420,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-6000:]
    assert console.count("exit 0") == 2 * len(CORPORA), console[-6000:]

    for code, run in runs.items():
        config = json.loads((run / "train_config.json").read_text())
        assert config["language"] == code and config["world_size"] == 2
        assert config["primary_metric"] == ("eval_cer" if code == "zh" else "eval_wer")
        assert set(metrics_by_step(run, "eval_wer")) == set(metrics_by_step(run, "eval_cer")) == {2}
        assert metrics_by_step(run, "eval_cer")[2] > 0  # an untrained model: errors, and they are counted
    assert console.count("data: train: 6 utterances") == len(CORPORA), console[-6000:]
    assert console.count("skipped none") >= len(CORPORA)
    lines = [line for line in console.splitlines() if "eval step 2:" in line]
    assert len(lines) == len(CORPORA), lines
    assert sum(" eval step 2: cer " in line and "(n/a: no word spaces)" in line for line in lines) == 1
    assert sum(" eval step 2: loss " in line and "n/a" not in line for line in lines) == 5

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [zh_run] = client.search_runs([client.get_experiment_by_name("zh").experiment_id])
    assert zh_run.data.tags["xlsr_dist.primary_metric"] == "eval_cer" and zh_run.data.params["language"] == "zh"
    assert [m.step for m in client.get_metric_history(zh_run.info.run_id, "eval_cer")] == [2]

    from transformers import Wav2Vec2Processor

    wav = {code: tmp_path / f"{code}-corpus" / "wav" / "eval-0.wav" for code in CORPORA}
    for code, run in runs.items():
        exported = export.export(run, tmp_path / f"{code}-model")
        assert (exported / "README.md").read_text().splitlines()[1] == f"language: {code}"
        vocab = text.load_vocab(run / "model_config" / "vocab.json")
        tokenizer = Wav2Vec2Processor.from_pretrained(exported).tokenizer
        for character, index in vocab.items():
            if character not in (text.UNK, text.PAD):
                expected = " " if character == text.WORD_DELIMITER else character
                assert tokenizer.decode([index]) in (expected, expected.strip()), (code, character)
        for _, normalised in CORPORA[code]:
            ids = tokenizer(normalised).input_ids
            assert text.UNK not in tokenizer.convert_ids_to_tokens(ids)
            assert tokenizer.decode(ids, group_tokens=False) == normalised

        with pytest.raises(SystemExit) as done:
            transcribe.main(["--model", str(exported), "--device", "cpu", str(wav[code])])
        assert done.value.code == 0
        printed = capsys.readouterr().out.splitlines()[-1]  # DeepSpeed may say which accelerator it found before
        assert printed.startswith(f"{wav[code]}\t")
        _assert_in_script(printed.split("\t", 1)[1], vocab, SCRIPTS[code])

    # The command itself writes the script to a pipe (UTF-8 whatever the locale).
    shown = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", "--model", str(tmp_path / "zh-model"), str(wav["zh"])],
        cwd=ROOT,
        env=base_env(LC_ALL="C", LANG="C"),
        capture_output=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr.decode(errors="replace")
    line = shown.stdout.decode("utf-8").splitlines()[-1]
    _assert_in_script(
        line.split("\t", 1)[1].strip(), text.load_vocab(runs["zh"] / "model_config" / "vocab.json"), "CJK"
    )


@pytest.mark.slow
def test_language_mismatch_at_training_start_is_one_message_and_exit_2(tmp_path: Path) -> None:
    out, _ = prepared(tmp_path, "ru")
    proc = run_module(["xlsr_dist.train", *_train_flags(out, tmp_path / "run", "de")], timeout=180)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-3000:]
    assert f"--language de: the training data at {out / 'train'} was prepared for 'ru' (manifest.json)" in both
    assert "Traceback" not in both and not (tmp_path / "run").exists()
