"""One demo model trained for real per test session (launch/demo.yaml on one rank, 500 steps, eval WER ~0.01):
for tests that need a model that has learned, such as word timestamps against known boundaries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._runs import DATA_CACHE, ROOT


@pytest.fixture(scope="session")
def trained_demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained_demo") / "run"
    flags = ["--config", "launch/demo.yaml", "--output_dir", str(out), "--data_cache_dir", str(DATA_CACHE)]
    # One evaluation at the end instead of five; the training steps are the demo's.
    flags += ["--report_to", "none", "--disable_tqdm", "true", "--eval_steps", "500", "--save_steps", "500"]
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.train", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "final" / "config.json").is_file()
    return out
