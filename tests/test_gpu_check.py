"""`make gpu-check` on a CPU: bench/gpu_check.py --dry_run runs every config through both sides and reports what the
GPU run reports; bench/gpu_wheels.py lists what a GPU machine without a package index must be given."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests._dist import ROOT, base_env, run_launcher

sys.path.insert(0, str(ROOT / "bench"))

import gpu_wheels  # noqa: E402


def test_wheels_cover_the_imports_and_leave_torch_to_the_machine() -> None:
    carried = gpu_wheels.carried()
    for needed in ("deepspeed", "transformers", "datasets", "jiwer", "mlflow-skinny", "sqlalchemy", "soundfile"):
        assert needed in carried, needed
    # DeepSpeed's own needs that the GPU image lacks come along; its CUDA stack does not.
    assert {"pydantic", "pydantic-core", "hjson"} <= set(carried)
    assert not {"torch", "triton", "numpy"} & set(carried)
    assert not [name for name in carried if name.startswith("nvidia-")]
    assert gpu_wheels.BUILT == ("deepspeed",)


@pytest.mark.slow
def test_dry_run_reports_every_config_on_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    cmd = [sys.executable, str(ROOT / "bench/gpu_check.py"), "--dry_run", "--out", str(out)]
    # Two runs at a time: on 2 cores each run is mostly one core's worth of start-up (imports, model, engine).
    cmd += ["--data_cache", str(tmp_path / "data"), "--jobs", "2"]
    proc = run_launcher(cmd, timeout=540, env=base_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {(r["config"], r["side"]): r for r in results["rows"]}
    assert set(rows) == {(c, s) for c in ("zero2_fp16", "zero2_amp", "zero2_bf16") for s in ("xlsr_dist", "hf")}
    for row in rows.values():
        assert row["split_problems"] == []
        assert row["audio_hours_per_gpu_hour"] > 0 and row["median_step_s"] > 0 and row["peak_memory_gib"] > 0
    for config in ("zero2_fp16", "zero2_amp", "zero2_bf16"):
        history = rows[(config, "xlsr_dist")]["loss_scale_history"]
        assert len(history) == results["steps"]
        assert rows[(config, "xlsr_dist")]["skipped_steps"] == history[-1]["skipped_steps"]
    # The dry run's stand-ins for fp16 (fp32) and bf16 have no loss scale and never skip a step.
    for config in ("zero2_fp16", "zero2_bf16"):
        assert {(h["loss_scale"], h["skipped_steps"]) for h in rows[(config, "xlsr_dist")]["loss_scale_history"]} == {
            (1.0, 0)
        }
    amp_scales = [h["loss_scale"] for h in rows[("zero2_amp", "xlsr_dist")]["loss_scale_history"]]
    assert all(scale >= 1 and float(scale).is_integer() for scale in amp_scales)
    table = (out / "results.md").read_text()
    assert "| zero2_amp | hf |" in table and "| zero2_bf16 | xlsr_dist |" in table
