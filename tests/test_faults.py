"""Fast failure and crash-safe checkpoints with real ranks, no SLURM: a rank killed with SIGKILL takes every other
rank down (non-zero, within 60 s, no hang), and a save cut short never becomes the checkpoint a resume picks."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from tests._dist import RankResult, base_env, run_ranks
from tests._runs import tiny_flags
from xlsr_dist.training.checkpoint import MARKER, SLOW_SAVE_ENV, newest_complete

pytestmark = pytest.mark.slow

FAIL_WITHIN_S = 60.0


def _rank_pids(output_dir: Path) -> dict[int, int]:
    """pid of each rank of the run writing to ``output_dir``, from /proc (run_ranks keeps its Popen objects)."""
    marker = str(output_dir).encode()
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"xlsr_dist.train" not in cmd or marker not in cmd:
                continue
            env = dict(
                kv.split(b"=", 1) for kv in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") if b"=" in kv
            )
            found[int(env[b"RANK"])] = int(entry)
        except (OSError, KeyError, ValueError):
            continue
    return found


def _wait_for(condition: Callable[[], bool], what: str, run: Future[list[RankResult]], timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.done():
            results = run.result()
            pytest.fail(f"run ended before {what}: {[r.returncode for r in results]}\n{results[0].output[-3000:]}")
        assert time.monotonic() < deadline, f"not {what} after {timeout:.0f} s"
        time.sleep(0.05)


def _last_step(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _kill_and_time(output_dir: Path, victim: int, run: Future[list[RankResult]]) -> tuple[list[RankResult], float]:
    pids = _rank_pids(output_dir)
    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()
    results = run.result()
    return results, time.monotonic() - killed


def _assert_all_down(results: list[RankResult], victim: int, elapsed: float) -> None:
    assert results[victim].returncode == -signal.SIGKILL
    survivors = [r for r in results if r.rank != victim]
    assert all(r.returncode not in (0, None) for r in survivors), [r.returncode for r in results]
    assert elapsed < FAIL_WITHIN_S, f"ranks took {elapsed:.1f} s to exit after the kill"
    print(f"{len(results)} ranks: all exited {elapsed:.1f} s after rank {victim} was killed")  # shown with -s
    for r in survivors:
        assert "a collective failed, a peer rank probably died" in r.output, f"rank {r.rank}:\n{r.output[-2000:]}"


def test_kill_during_save_fails_fast_and_resume_uses_previous_checkpoint(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    flags = tiny_flags(out, uri, max_steps=6, save_steps=2, eval_steps=100)
    # Every save pauses between DeepSpeed's files and the COMPLETE marker, so the kill lands inside one.
    env = base_env(**{SLOW_SAVE_ENV: "3"})
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_ranks, ["-m", "xlsr_dist.train", *flags], 2, 600, env=env, log_dir=tmp_path / "logs1")
        step2, step4 = out / "checkpoints" / "step-0000002", out / "checkpoints" / "step-0000004"
        _wait_for(lambda: (step2 / MARKER).is_file() and step4.is_dir(), "inside the step-4 save", run)
        assert not (step4 / MARKER).is_file()
        results, elapsed = _kill_and_time(out, victim=1, run=run)
    _assert_all_down(results, victim=1, elapsed=elapsed)
    assert not (step4 / MARKER).exists(), "a save cut short must not be marked complete"
    assert newest_complete(out) == step2
    first_attempt = _losses_logged(out)

    resumed = run_ranks(
        [
            "-m",
            "xlsr_dist.train",
            *tiny_flags(out, uri, max_steps=6, save_steps=2, eval_steps=100, resume_from_checkpoint="latest"),
        ],
        world_size=2,
        timeout=600,
        log_dir=tmp_path / "logs2",
    )
    assert all(r.returncode == 0 for r in resumed), resumed[0].output[-4000:]
    assert f"resumed from {step2} at step 2" in resumed[0].output
    assert (step4 / MARKER).is_file() and (out / "final" / "config.json").is_file()
    # The steps the killed attempt had trained past its checkpoint come out the same again: the restore is exact.
    again = _losses_logged(out, last=True)
    for step, value in first_attempt.items():
        if step > 2:
            assert again[step] == pytest.approx(value, rel=1e-5, abs=1e-6), step


def _losses_logged(out: Path, last: bool = False) -> dict[int, float]:
    """Loss per step from metrics.jsonl (a resumed run appends): the first value logged for each step, or the last."""
    losses: dict[int, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "loss" in row and (last or int(row["step"]) not in losses):
            losses[int(row["step"])] = float(row["loss"])
    return losses


def test_kill_one_of_four_ranks_takes_all_down_within_a_minute(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    flags = tiny_flags(out, uri, max_steps=12, save_steps=100, eval_steps=100, report_to="none")
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_ranks, ["-m", "xlsr_dist.train", *flags], 4, 600, log_dir=tmp_path / "logs")
        _wait_for(lambda: _last_step(out) >= 2, "training (step 2 logged)", run)
        results, elapsed = _kill_and_time(out, victim=2, run=run)
    _assert_all_down(results, victim=2, elapsed=elapsed)


# Rank 1 raises inside its second training step, as a CUDA out-of-memory or a bug on one rank would: the code path
# is the real one, only the exception is injected (through the trainer's step hooks, once the step's batches are in).
_RAISE_ON_RANK_1 = """
import os, sys
from xlsr_dist import train
from xlsr_dist.training.trainer import StepHooks

class FailOnRank1(StepHooks):
    def batches_ready(self, step, micro_batches):
        if step == 2 and os.environ["RANK"] == "1":
            train.log.error("injecting a failure")
            raise RuntimeError("injected failure on rank 1")

train.main(sys.argv[1:], hooks=FailOnRank1())
"""


def test_rank_that_raises_takes_the_other_down_within_a_minute(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    flags = tiny_flags(out, uri, max_steps=4, save_steps=100, eval_steps=100, report_to="none")
    results = run_ranks(["-c", _RAISE_ON_RANK_1, *flags], 2, 600, log_dir=tmp_path / "logs")
    all_exited = time.time()
    assert results[1].returncode == 1 and "injected failure on rank 1" in results[1].output
    assert results[0].returncode not in (0, None)
    assert "a collective failed, a peer rank probably died" in results[0].output, results[0].output[-2000:]
    raised = next(line for line in results[1].output.splitlines() if "injecting a failure" in line)
    elapsed = all_exited - datetime.strptime(raised[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert elapsed < FAIL_WITHIN_S, f"ranks took {elapsed:.1f} s to exit after rank 1 raised"
    print(f"2 ranks: all exited {elapsed:.1f} s after rank 1 raised")  # shown with -s
