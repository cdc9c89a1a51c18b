"""A corpus mixing good and broken files goes through prepare and then training: every bad item is named with its
reason, every good item reaches the shards, and training runs on them without crashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._corpus import make_bad_corpus
from tests._dist import run_module
from tests._runs import metrics_by_step, tiny_flags

pytestmark = pytest.mark.slow


def test_bad_corpus_prepares_and_trains(tmp_path: Path) -> None:
    tsv, good_ids, bad = make_bad_corpus(tmp_path / "corpus")
    shards_dir = tmp_path / "shards"
    prep = run_module(
        [
            "xlsr_dist.prepare",
            "--layout",
            "folder",
            "--input",
            str(tsv),
            "--output",
            str(shards_dir),
            "--num_shards",
            "2",
            "--num_workers",
            "1",
            "--no_progress",
        ],
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    report = json.loads((shards_dir / "train" / "report.json").read_text())
    skipped = {item["id"]: item["reason"] for item in report["skipped"]}
    for bad_id, reason in bad.items():
        assert bad_id in skipped and reason in skipped[bad_id], (bad_id, skipped.get(bad_id))

    from xlsr_dist.data import shards

    ids = shards.read_metadata(shards.list_shards(str(shards_dir / "train"))).column("id").to_pylist()
    assert sorted(ids) == sorted(good_ids)

    out = tmp_path / "out"
    flags = tiny_flags(
        out,
        f"sqlite:///{tmp_path}/mlflow.db",
        train_data=str(shards_dir / "train"),
        eval_data=str(shards_dir / "train"),
        max_steps=2,
        eval_steps=2,
        save_steps=2,
        report_to="none",
    )
    run = run_module(
        ["xlsr_dist.train", *flags],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert sorted(metrics_by_step(out, "loss")) == [1, 2]
    assert metrics_by_step(out, "eval_wer")
