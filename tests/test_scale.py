"""A Common Voice-sized split (1M utterances) through the real trainer on 2 ranks: start-up stays within a test's
time, every rank places its slices, and training reaches its steps. Costs are measured in bench/scale.py, not here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._dist import run_ranks
from tests._many_shards import write_split


@pytest.mark.slow
def test_a_million_utterances_train_to_step_3_on_2_ranks(tmp_path: Path) -> None:
    train = write_split(tmp_path / "train", 1_000_000, 8)
    evaluation = write_split(tmp_path / "eval", 32, 1)
    out = tmp_path / "out"
    flags = ["--architecture", "tiny", "--train_data", train, "--eval_data", evaluation, "--output_dir", str(out)]
    flags += ["--deepspeed", "ds_configs/zero2_fp32.json", "--max_steps", "3", "--warmup_steps", "0"]
    flags += ["--global_batch_size", "8", "--report_to", "none", "--mask_time_prob", "0", "--logging_steps", "1"]
    flags += ["--eval_steps", "3", "--save_steps", "3"]
    results = run_ranks(["-m", "xlsr_dist.train", *flags], world_size=2, timeout=600, log_dir=tmp_path / "logs")
    assert [r.returncode for r in results] == [0, 0], results[0].output[-3000:] + results[1].output[-3000:]
    log = results[0].output
    assert "train: 1000000 utterances (61.11 h) from 8 shard(s); 125000 steps/epoch" in log
    assert "eval step 3:" in log and "done: 3 steps" in log
    assert (out / "final" / "config.json").exists()
