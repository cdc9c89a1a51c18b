"""`python -m xlsr_dist.lm build` (KenLM lmplz, built by tools/build_kenlm.sh in `make setup`) and LM beam search
(xlsr_dist/decoding/beam.py over pyctcdecode): the LM directory is pyctcdecode's layout, text files are normalised
as the split was, the LM corrects a misspelt word greedy decoding keeps, tuning's choice does not depend on how the
grid is split, and bad input is one message and exit status 2 with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests._runs import DATA_CACHE
from xlsr_dist import text
from xlsr_dist.data import demo
from xlsr_dist.decoding import beam, lm_build, tune
from xlsr_dist.decoding.greedy import ctc_greedy_decode
from xlsr_dist.lm import main


def _demo_train() -> Path:
    return demo.ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)[0]


def _train_texts() -> list[str]:
    return [
        t
        for f in sorted(_demo_train().glob("*.parquet"))
        for t in pq.read_table(f, columns=["text"])["text"].to_pylist()
    ]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "demo_lm"
    main(["build", "--output", str(out), "--train_data", str(_demo_train()), "--order", "3"])
    return out


def test_build_writes_pyctcdecode_layout_with_the_corpus_words(lm_dir: Path) -> None:
    from pyctcdecode import LanguageModel

    visible = sorted(p.name for p in lm_dir.iterdir() if not p.name.startswith("."))
    assert visible == ["attrs.json", "lm.bin", "unigrams.txt"]
    words = sorted({w for t in _train_texts() for w in t.split()})
    assert (lm_dir / "unigrams.txt").read_text().splitlines() == words
    lm = LanguageModel.load_from_dir(str(lm_dir))
    assert lm.order == 3
    info = json.loads((lm_dir / lm_build.INFO_FILE).read_text())
    assert (info["order"], info["words"], info["sentences"]) == (3, len(words), len(_train_texts()))
    assert info["normalization"]["language"] == "en"
    assert json.loads((lm_dir / "attrs.json").read_text())["alpha"] == lm_build.DEFAULT_ALPHA


def test_text_files_are_normalised_as_the_split_records(tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("Hello, World! 42 times\nCafé au lait\n", encoding="utf-8")
    out = tmp_path / "lm"
    main(["build", "--output", str(out), "--train_data", str(_demo_train()), "--text", str(extra)])
    unigrams = set((out / "unigrams.txt").read_text().splitlines())
    assert {"hello", "world", "forty", "two", "times", "cafe", "au", "lait"} <= unigrams
    assert not any(c.isupper() or c in ",!é" for w in unigrams for c in w)


def test_prune_thresholds_reach_lmplz(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = [f"w{chr(97 + i)}" for i in range(20)]
    corpus.write_text("".join(" ".join(rng.choice(words, 6)) + "\n" for _ in range(400)))
    full, pruned = tmp_path / "full", tmp_path / "pruned"
    main(["build", "--output", str(full), "--text", str(corpus)])
    main(["build", "--output", str(pruned), "--text", str(corpus), "--prune", "0", "1", "1"])
    assert json.loads((pruned / lm_build.INFO_FILE).read_text())["prune"] == [0, 1, 1]
    # Singleton bigrams and trigrams dropped: most trigrams of 400 random sentences are singletons.
    assert (pruned / "lm.bin").stat().st_size < 0.7 * (full / "lm.bin").stat().st_size


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    exists = tmp_path / "exists"
    exists.mkdir()
    out = str(tmp_path / "out")
    return {
        "missing text": (["--output", out, "--text", str(tmp_path / "nope.txt")], f"--text {tmp_path / 'nope.txt'}"),
        "unreadable text": (["--output", out, "--text", str(binary)], f"--text {binary}: cannot be read as UTF-8"),
        "missing shards": (["--output", out, "--train_data", str(tmp_path / "no")], f"--train_data {tmp_path / 'no'}"),
        "order": (["--output", out, "--text", str(binary), "--order", "1"], "--order must be 2 to 6 (got 1)"),
        "prune": (["--output", out, "--train_data", str(_demo_train()), "--prune", "1", "1"], "first threshold"),
        "no corpus": (["--output", out], "give --train_data SHARDS and/or --text FILE"),
        "exists": (["--output", str(exists), "--train_data", str(_demo_train())], "already exists"),
    }


@pytest.mark.parametrize(
    "case", ["missing text", "unreadable text", "missing shards", "order", "prune", "no corpus", "exists"]
)
def test_bad_input_is_one_message_exit_2_and_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = _bad_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as done:
        main(["build", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("xlsr_dist.lm:") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _spelt(word: str, vocab: dict[str, int], wrong_at: int, wrong: str) -> np.ndarray:
    """Log-probs spelling ``word`` one character a frame with a blank between, where at ``wrong_at`` the
    character ``wrong`` is a little more likely than the right one."""
    rows = []
    for i, c in enumerate(word):
        p = np.full(len(vocab), 1e-4)
        if i == wrong_at:
            p[vocab[wrong]], p[vocab[c]] = 0.52, 0.46
        else:
            p[vocab[c]] = 0.98
        rows.append(p / p.sum())
        blank = np.full(len(vocab), 1e-4)
        blank[vocab[text.PAD]] = 0.99
        rows.append(blank / blank.sum())
    return np.log(np.array(rows, dtype=np.float32))


def test_the_lm_corrects_a_word_greedy_misspells_and_gives_its_frames(lm_dir: Path) -> None:
    vocab = text.build_vocab(_train_texts())
    inverse = text.inverse(vocab)
    word = max(set(" ".join(_train_texts()).split()), key=lambda w: (len(w), w))
    wrong = next(c for c in "zqxjkv" if c in vocab and c != word[1])
    log_probs = _spelt(word, vocab, 1, wrong)
    greedy = ctc_greedy_decode(log_probs.argmax(-1).tolist(), inverse, vocab[text.PAD])
    assert greedy == word[0] + wrong + word[2:]
    decoder = beam.load_beam_decoder(lm_dir, inverse, beam_width=16)
    words = decoder.decode(log_probs)
    assert words == [beam.Word(word, 0, 2 * len(word) - 1)]


def test_an_lm_the_vocabulary_cannot_spell_or_a_missing_one_is_refused(lm_dir: Path, tmp_path: Path) -> None:
    vocab = text.build_vocab(_train_texts())
    letter = sorted(c for c in vocab if c.isalpha())[0]
    lacking = text.inverse({t: i for i, t in enumerate(t for t in text.inverse(vocab) if t != letter)})
    with pytest.raises(lm_build.LMError, match=f"--lm {lm_dir}: its words use 1 character"):
        beam.load_beam_decoder(lm_dir, lacking)
    with pytest.raises(lm_build.LMError, match="no such directory"):
        beam.load_beam_decoder(tmp_path / "none", text.inverse(vocab))


def test_the_choice_is_fewest_errors_then_the_other_kind_then_grid_order() -> None:
    points = [
        tune.GridPoint(0, 0.0, 0.0, 5, 10, 9, 40),
        tune.GridPoint(1, 0.0, 1.0, 3, 10, 8, 40),
        tune.GridPoint(2, 0.5, 0.0, 3, 10, 7, 40),
        tune.GridPoint(3, 0.5, 1.0, 3, 10, 7, 40),
    ]
    assert tune.choose(points, by_words=True).index == 2
    assert tune.choose(list(reversed(points)), by_words=True).index == 2
    assert tune.choose(points, by_words=False).index == 2
    assert tune.grid([0.5, 0.0], [1, 2]) == [(0.5, 1.0), (0.5, 2.0), (0.0, 1.0), (0.0, 2.0)]
