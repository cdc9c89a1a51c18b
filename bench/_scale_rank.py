"""One rank of bench/scale.py: `python -m xlsr_dist.train`'s main(), unchanged, observed through its step hooks;
when the first step begins it writes how long this process took to get there (wall and CPU seconds since the
process was created: interpreter, imports, process group, model, DeepSpeed, metadata, first batches' set-up) and
its memory then.

    XLSR_SCALE_RECORD=rank{rank}.json python bench/_scale_rank.py <xlsr_dist.train flags>
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from xlsr_dist import train  # noqa: E402
from xlsr_dist.atomic import write_json  # noqa: E402
from xlsr_dist.trainer import StepHooks  # noqa: E402

RECORD_ENV = "XLSR_SCALE_RECORD"


def status_mb(field: str) -> float | None:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MB, None where there is no /proc."""
    try:
        match = re.search(rf"{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


class FirstStep(StepHooks):
    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False

    def step_begin(self, step: int) -> None:
        if self.written:
            return
        self.written = True
        process = psutil.Process()
        cpu = process.cpu_times()
        write_json(
            self.path,
            {
                "rank": int(os.environ.get("RANK", "0")),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "startup_s": time.time() - process.create_time(),
                "startup_cpu_s": cpu.user + cpu.system,
                "rss_mb": status_mb("VmRSS"),
                "peak_rss_mb": status_mb("VmHWM"),
                # Shared pages (the mapped torch libraries, page cache of memory-mapped files) count in every rank's
                # RSS; USS is what this rank alone holds.
                "uss_mb": process.memory_full_info().uss / 2**20,
            },
        )


def main(argv: list[str]) -> None:
    record = os.environ.get(RECORD_ENV, "")
    if not record:
        raise SystemExit(f"{RECORD_ENV} must name this rank's record file")
    train.main(argv, hooks=FirstStep(record))


if __name__ == "__main__":
    main(sys.argv[1:])
