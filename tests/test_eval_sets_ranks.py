"""Two evaluation sets in one training run (--eval_data 'a=dirA,b=dirB'), real ranks through the trainer on 1 and
2 ranks: each set's loss/WER/CER reach MLflow as eval/<set>/*, eval_* are their means, and both world sizes score
each set alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._resume import train
from tests._runs import DATA_CACHE, mlflow_history, mlflow_runs
from xlsr_dist.data.demo import ensure_demo_corpus

pytestmark = pytest.mark.slow
STEPS = 4


def test_each_eval_set_is_logged_under_its_name_on_1_and_2_ranks(tmp_path: Path) -> None:
    _, a_eval = ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)
    _, b_eval = ensure_demo_corpus(DATA_CACHE, seed=7, n_train=16, n_eval=10)
    flags = {"eval_data": f"a={a_eval},b={b_eval}", "max_steps": str(STEPS), "eval_steps": "2", "save_steps": "4"}
    by_world: dict[int, dict[str, dict[int, float]]] = {}
    for world_size in (1, 2):
        root = tmp_path / f"w{world_size}"
        uri = f"sqlite:///{root / 'mlflow.db'}"
        output = train(root / "out", root / "mlflow.db", world_size, root / "logs", **flags)
        assert f"eval step {STEPS} a: loss" in output and f"eval step {STEPS} b: loss" in output
        assert f"eval step {STEPS} (mean of the sets): loss" in output
        (run,) = mlflow_runs(uri)
        keys = [f"eval/{s}/{m}" for s in "ab" for m in ("loss", "wer", "cer")] + ["eval_loss", "eval_wer"]
        got = {k: mlflow_history(uri, run.info.run_id, k) for k in keys}
        for k in keys:
            assert sorted(got[k]) == [2, STEPS], k
        for step in (2, STEPS):
            for m in ("loss", "wer"):
                mean = (got[f"eval/a/{m}"][step] + got[f"eval/b/{m}"][step]) / 2
                assert got[f"eval_{m}"][step] == pytest.approx(mean, rel=1e-6)
        # The sets differ (16 vs 10 utterances of other speakers): their losses are not one number logged twice.
        assert got["eval/a/loss"][STEPS] != got["eval/b/loss"][STEPS]
        by_world[world_size] = got
    for k in by_world[1]:
        for step in (2, STEPS):
            assert by_world[2][k][step] == pytest.approx(by_world[1][k][step], rel=1e-4, abs=1e-6), (k, step)
