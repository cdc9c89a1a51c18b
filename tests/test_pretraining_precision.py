"""`xlsr_dist.pretrain` under a loss scale with training's overflow handling, 2 real ranks on this CPU (fp16 declared
supported by tests/_fp16_train.py): an overflow injected on one rank is skipped on every rank and counted in the
``skipped_steps`` metric, its losses left out of the log; --max_nonfinite_steps skipped steps in a row stop the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._dist import ROOT, run_ranks
from tests.test_pretraining_ranks import flags

pytestmark = pytest.mark.slow

LAUNCHER = str(ROOT / "tests/_fp16_train.py")


def _pretrain(tmp_path: Path, config: str, overflow_steps: str, max_nonfinite: int) -> tuple[Path, list]:
    out = tmp_path / "out"
    args = [LAUNCHER, "--pretrain", "--overflow_steps", overflow_steps, "--overflow_rank", "1", "--"]
    args += flags(out, "--deepspeed", f"ds_configs/{config}.json", "--max_steps", "6")
    args += ["--max_nonfinite_steps", str(max_nonfinite)]
    return out, run_ranks(args, world_size=2, timeout=300, log_dir=tmp_path / "logs")


@pytest.mark.parametrize("config", ["zero2_fp16", "zero2_amp"])
def test_an_overflow_on_one_rank_is_skipped_everywhere_and_logged(config: str, tmp_path: Path) -> None:
    out, results = _pretrain(tmp_path, config, "3,4", max_nonfinite=5)
    for r in results:
        assert r.returncode == 0, r.output[-4000:]
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step" in r}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    # Steps 3 and 4 are skipped whatever the tiny model's own early overflows at the initial scale were.
    assert rows[4]["skipped_steps"] - rows[2]["skipped_steps"] == 2
    assert "loss" not in rows[3] and "loss" not in rows[4] and "loss" in rows[5]
    assert "step 3 skipped: non-finite gradients" in results[0].output, results[0].output[-3000:]


def test_overflows_in_a_row_stop_the_run(tmp_path: Path) -> None:
    _, results = _pretrain(tmp_path, "zero2_amp", "3-", max_nonfinite=2)
    for r in results:
        assert r.returncode != 0
    out = results[0].output
    # Step 3 is skipped and the run goes on; the second skip in a row (--max_nonfinite_steps 2) ends it. The injected
    # loss itself is inf, so the guard names a non-finite loss (training's CTC test sees finite item losses).
    assert "step 3 skipped" in out and "(2 in a row, --max_nonfinite_steps 2)" in out, out[-3000:]
    assert "NonFiniteLoss: non-finite loss at step 4 (amp)" in out, out[-3000:]
    assert "step 5" not in out
