"""A two-language mixed run with one eval set per language, real ranks through the trainer on 1 and 2 ranks:
English demo + the demo relabelled as French (tests/_french_demo.py), each read with its own recorded text settings
into one vocabulary; each set's loss/WER/CER reach MLflow as eval/<set>/*, eval_* are their means, and both world
sizes score each set alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._french_demo import french_copy
from tests._resume import train
from tests._runs import DATA_CACHE, mlflow_history, mlflow_runs
from xlsr_dist.data.demo import ensure_demo_corpus

pytestmark = pytest.mark.slow
STEPS = 4


def test_two_languages_mixed_each_eval_set_logged_under_its_name_on_1_and_2_ranks(tmp_path: Path) -> None:
    en_train, en_eval = ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)
    fr_train, fr_eval = ensure_demo_corpus(DATA_CACHE, seed=7, n_train=16, n_eval=10)
    fr_train, fr_eval = french_copy(fr_train, tmp_path / "fr/train"), french_copy(fr_eval, tmp_path / "fr/eval")
    flags = {
        "train_data": f"{en_train}=0.5,{fr_train}=0.5",
        "eval_data": f"en={en_eval},fr={fr_eval}",
        "max_steps": str(STEPS),
        "eval_steps": "2",
        "save_steps": "4",
    }
    by_world: dict[int, dict[str, dict[int, float]]] = {}
    for world_size in (1, 2):
        root = tmp_path / f"w{world_size}"
        uri = f"sqlite:///{root / 'mlflow.db'}"
        output = train(root / "out", root / "mlflow.db", world_size, root / "logs", **flags)
        assert f"eval step {STEPS} en: loss" in output and f"eval step {STEPS} fr: loss" in output
        assert f"eval step {STEPS} (mean of the sets): loss" in output
        vocab = json.loads((root / "out/final/vocab.json").read_text())
        assert "é" in vocab and "e" in vocab  # French keeps its accents, English folds them: both letters
        (run,) = mlflow_runs(uri)
        keys = [f"eval/{s}/{m}" for s in ("en", "fr") for m in ("loss", "wer", "cer")] + ["eval_loss", "eval_wer"]
        got = {k: mlflow_history(uri, run.info.run_id, k) for k in keys}
        for k in keys:
            assert sorted(got[k]) == [2, STEPS], k
        for step in (2, STEPS):
            for m in ("loss", "wer"):
                mean = (got[f"eval/en/{m}"][step] + got[f"eval/fr/{m}"][step]) / 2
                assert got[f"eval_{m}"][step] == pytest.approx(mean, rel=1e-6)
        assert got["eval/en/loss"][STEPS] != got["eval/fr/loss"][STEPS]
        by_world[world_size] = got
    for k in by_world[1]:
        for step in (2, STEPS):
            assert by_world[2][k][step] == pytest.approx(by_world[1][k][step], rel=1e-4, abs=1e-6), (k, step)
