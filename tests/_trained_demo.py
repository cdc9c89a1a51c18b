"""The demo trained for real once per test session, the way `make demo` runs it (launch/demo.yaml, 2 ranks through
the DeepSpeed launcher, 500 steps, eval WER ~0.01): tests/test_learning.py checks its eval WER by step, and tests that
need a model that has learned (word timestamps against known boundaries, tests/test_transcribe_long.py) use its
final/ model, so the session trains it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._dist import base_env, run_launcher, venv_bin
from tests._net import free_port
from tests._runs import DATA_CACHE


@pytest.fixture(scope="session")
def trained_demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run's --output_dir (its MLflow store is ``mlflow.db`` beside it)."""
    root = tmp_path_factory.mktemp("trained_demo")
    out = root / "demo"
    cmd = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "xlsr_dist.train"]
    cmd += ["--config", "launch/demo.yaml", "--output_dir", str(out), "--data_cache_dir", str(DATA_CACHE)]
    cmd += ["--tracking_uri", f"sqlite:///{root / 'mlflow.db'}"]
    done = run_launcher(cmd, timeout=900, env=base_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (out / "final" / "config.json").is_file()
    return out
