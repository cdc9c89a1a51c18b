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
from xlsr_dist.training.trainer import StepHooks  # noqa: E402

RECORD_ENV = "XLSR_SCALE_RECORD"


def status_mb(field: str) -> float | None:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MB, None where there is no /proc."""
    try:
        match = re.search(rf"{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def catalog_mapping_mb() -> dict[str, float]:
    """The node's shared catalog as this rank maps it (xlsr_dist.data.node_catalog; /proc/self/smaps): resident MB,
    this rank's proportional share (PSS) and what only it holds (private). Zero where the rank built its own."""
    totals = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0}
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return {}
    inside = False
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if not head.endswith(":"):  # a mapping's header line: address range, permissions, ..., path
            inside = "xlsr_dist-catalog-" in line
        elif inside and head[:-1] in totals:
            totals[head[:-1]] += int(line.split()[1])
    return {
        "catalog_rss_mb": totals["Rss"] / 1024,
        "catalog_pss_mb": totals["Pss"] / 1024,
        "catalog_private_mb": (totals["Private_Clean"] + totals["Private_Dirty"]) / 1024,
    }


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
        memory = process.memory_full_info()
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
                "uss_mb": memory.uss / 2**20,
                # Shared pages divided among the processes that map them: the rank's fair share of the node.
                "pss_mb": memory.pss / 2**20,
                **catalog_mapping_mb(),
            },
        )


def main(argv: list[str]) -> None:
    record = os.environ.get(RECORD_ENV, "")
    if not record:
        raise SystemExit(f"{RECORD_ENV} must name this rank's record file")
    train.main(argv, hooks=FirstStep(record))


if __name__ == "__main__":
    main(sys.argv[1:])
