"""Mixed training sets of several languages, each read with the text settings its manifest records (data/language.py
read_as): the union vocabulary keeps each language's letters, the catalog encodes each set its own way, and two sets
of one language recorded with other settings are one refusal naming both. Pure, no processes;
tests/test_eval_sets_ranks.py trains such a mix on 1 and 2 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._french_demo import FRENCH, french_copy
from tests._runs import DATA_CACHE
from xlsr_dist import text
from xlsr_dist.config import build_config
from xlsr_dist.data import language
from xlsr_dist.data.catalog import build_catalog
from xlsr_dist.data.demo import ensure_demo_corpus
from xlsr_dist.data.vocabulary import split_vocabulary


@pytest.fixture(scope="module")
def two_languages(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    en_train, _ = ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)
    fr_source, _ = ensure_demo_corpus(DATA_CACHE, seed=7, n_train=16, n_eval=10)
    root = tmp_path_factory.mktemp("fr")
    return str(en_train), str(french_copy(fr_source, root / "fr")), root


def test_each_set_is_read_its_own_way_into_one_vocabulary(two_languages: tuple[str, str, Path]) -> None:
    en, fr, _ = two_languages
    assert language.read_as(fr, text.ENGLISH) == FRENCH
    assert language.read_as(en, text.ENGLISH) == text.ENGLISH  # the demo's manifest records none: the run's flags
    vocab = split_vocabulary(f"{en}=0.5,{fr}=0.5", text.ENGLISH)
    assert "é" in vocab and "e" in vocab  # English folds 'é' to 'e': read as English, 'é' would be missing
    assert "é" not in split_vocabulary(en, text.ENGLISH)
    cfg = build_config({"architecture": "tiny", "train_data": f"{en},{fr}", "eval_data": fr})
    catalog = build_catalog(fr, vocab, cfg.data, lambda n: n // 320)
    labels = {int(i) for i in catalog.label_flat}
    assert vocab["é"] in labels and vocab["e"] not in labels and len(catalog) == 16


def test_mixed_languages_pass_the_start_up_check_unless_one_language_is_spelled_two_ways(
    two_languages: tuple[str, str, Path],
) -> None:
    en, fr, root = two_languages
    assert language.training_problems(build_config({"train_data": f"{en},{fr}", "eval_data": f"en={en},fr={fr}"})) == []
    # One set alone is still read only as the run's --language says.
    [alone, its_eval] = language.training_problems(build_config({"train_data": fr, "eval_data": fr}))
    assert alone.startswith(f"--language en: the training data at {fr} was prepared for 'fr'")
    assert its_eval.startswith(f"--language en: the eval data at {fr} was prepared for 'fr'")
    folded = french_copy(Path(fr), root / "fr-folded", text.TextNormalization("fr", fold_accents=True))
    [problem] = language.training_problems(build_config({"train_data": f"{en},{fr},{folded}", "eval_data": fr}))
    assert problem.startswith(f"--train_data {folded}: 'fr' with other text settings")
    assert f"than --train_data {fr}" in problem and "one language must be spelled one way" in problem
