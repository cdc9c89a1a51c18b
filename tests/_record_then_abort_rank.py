"""A fake benchmark rank for tests/test_bench_smoke.py: records 3 steps of 2 utterances the way a real rank does
(bench/_record.StepRecorder), then the rank named by ABORT_RANK dies as gloo's teardown sometimes kills a finished
rank (std::terminate -> SIGABRT, exit -6), or, with ABORT_BEFORE_RECORD=1, before writing its record."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _record import RECORD_ENV, StepRecorder  # noqa: E402


def main() -> None:
    recorder = StepRecorder(os.environ[RECORD_ENV], "fake")
    aborts = recorder.rank == int(os.environ.get("ABORT_RANK", "-1"))
    if aborts and os.environ.get("ABORT_BEFORE_RECORD") == "1":
        os.abort()
    recorder.start_memory_window()
    for step in range(3):
        recorder.boundary()
        recorder.batches_ready()
        ids = [f"r{recorder.rank}s{step}u{k}" for k in range(2)]
        recorder.add_micro(step, ids, real_samples=16000, batch_size=2, max_samples=8000, max_label_length=3)
        time.sleep(0.01)
    recorder.boundary(last=True)
    recorder.write()
    if aborts:
        os.abort()
    time.sleep(1.0)  # the peer that ends cleanly ends after the one that aborted


if __name__ == "__main__":
    main()
