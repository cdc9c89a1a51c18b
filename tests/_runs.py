"""Shared pieces for tests that run real training: tiny model, small demo corpus, fp32, every step logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# One demo corpus for the whole test session (generated once, reused by every run and rank).
DATA_CACHE = Path(os.environ.get("XLSR_TEST_CACHE", "/tmp/xlsr_dist_test_cache"))


def tiny_flags(output_dir: Path, tracking_uri: str, **overrides: Any) -> list[str]:
    flags: dict[str, Any] = {
        "architecture": "tiny",
        "train_data": "demo",
        "data_cache_dir": str(DATA_CACHE),
        "demo_train_utterances": 96,
        "demo_eval_utterances": 16,
        "deepspeed": "ds_configs/zero2_fp32.json",
        "freeze_feature_encoder": "false",
        # SpecAugment off unless a test turns it on (tests/test_shared_randomness.py, tests/test_resume_rng.py)
        "mask_time_prob": 0.0,
        "learning_rate": 2e-3,
        "warmup_steps": 2,
        "max_steps": 8,
        "logging_steps": 1,
        "eval_steps": 4,
        "save_steps": 4,
        "output_dir": str(output_dir),
        "tracking_uri": tracking_uri,
        "experiment_name": "e2e",
        "disable_tqdm": "true",
        "dataloader_num_workers": 0,
    }
    flags.update(overrides)
    out: list[str] = []
    for k, v in flags.items():
        out += [f"--{k}", str(v)]
    return out


def metrics_by_step(output_dir: Path, name: str) -> dict[int, float]:
    """The local metric record the rank-0 tracker keeps beside MLflow."""
    from xlsr_dist.tracking import read_metrics_jsonl

    return read_metrics_jsonl(output_dir / "metrics.jsonl").get(name, {})


def mlflow_runs(tracking_uri: str, experiment: str = "e2e") -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string="tags.`xlsr_dist.kind` = 'training'")


def mlflow_history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}
