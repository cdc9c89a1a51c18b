"""Per-rank timing record shared by both sides of bench/train_speed.py: step boundaries, what each micro-batch held,
and peak memory over the training steps only (model building, DeepSpeed set-up and dataset preprocessing excluded).

Only time.perf_counter() and list appends happen per step: nothing here waits for the accelerator, so the loop being
measured keeps its own synchronisation pattern.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_IMPORTED = time.perf_counter()
RECORD_ENV = "XLSR_BENCH_RECORD"
PROFILE_ENV = "XLSR_BENCH_PROFILE"
PREDECODED_ENV = "XLSR_BENCH_PREDECODED"


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux clear_refs 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset (VmHWM), else since process start (ru_maxrss)."""
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's live descendants (read twice per run, never per step)."""
    try:
        import psutil

        total = 0.0
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total
    except ImportError:
        return 0.0


class StepRecorder:
    """Collects one rank's record and writes it as JSON when the run ends."""

    def __init__(self, path: str | Path, side: str) -> None:
        self.path = Path(path)
        self.side = side
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.boundaries: list[float] = []
        self.cpu_boundaries: list[float] = []
        self.data_ready: list[float] = []
        self.children_cpu: list[float] = []
        self.micro: list[dict[str, Any]] = []
        self.profile: list[dict[str, float]] = []
        self.extra: dict[str, Any] = {}
        self.process_start = time.perf_counter()
        self.memory_window_started = False
        self.rss_reset_ok = False
        self.process_peak_rss_before_steps = 0

    def start_memory_window(self, device: torch.device | None = None) -> None:
        """Called once, right before the first training batch is fetched."""
        if self.memory_window_started:
            return
        self.memory_window_started = True
        self.children_cpu.append(children_cpu_seconds())
        self.process_peak_rss_before_steps = peak_rss_bytes()
        self.rss_reset_ok = reset_peak_rss()
        if device is not None and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def boundary(self, last: bool = False) -> None:
        """A step starts (or, with ``last``, the last step ended). Process CPU time too: on a shared CPU it is the
        figure other users' load inflates least."""
        self.boundaries.append(time.perf_counter())
        self.cpu_boundaries.append(time.process_time())
        if last:
            self.children_cpu.append(children_cpu_seconds())

    def batches_ready(self) -> None:
        """The step's micro-batches are in hand: boundary -> here is the step's data wait."""
        self.data_ready.append(time.perf_counter())

    def add_micro(
        self, step: int, ids: Sequence[str], real_samples: int, batch_size: int, max_samples: int, max_label_length: int
    ) -> None:
        """One micro-batch of optimizer step ``step``: its utterance ids, real audio samples and padded shape."""
        self.micro.append(
            {
                "step": int(step),
                "ids": list(ids),
                "real": int(real_samples),
                "batch": int(batch_size),
                "max_samples": int(max_samples),
                "max_label": int(max_label_length),
            }
        )

    def write(self, device: torch.device | None = None) -> None:
        cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        record = {
            "side": self.side,
            "rank": self.rank,
            "world_size": self.world_size,
            "boundaries": self.boundaries,
            "data_ready": self.data_ready,
            "cpu_boundaries": self.cpu_boundaries,
            # CPU seconds of this rank's live child processes (DataLoader workers) at the first and last boundary.
            "children_cpu": self.children_cpu,
            # Process start (this module's import) to the first step: imports, model, DeepSpeed, data set-up.
            "startup_s": (self.boundaries[0] - _IMPORTED) if self.boundaries else None,
            "micro": self.micro,
            "profile": self.profile,
            "peak_rss_steps": peak_rss_bytes() if self.rss_reset_ok else None,
            "peak_rss_process": max(self.process_peak_rss_before_steps, peak_rss_bytes()),
            # The largest reaped child (a DataLoader worker): it is not part of the rank's own RSS.
            "peak_rss_children": int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024,
            "cuda_max_allocated": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
            "cuda_max_reserved": int(torch.cuda.max_memory_reserved(device)) if cuda else None,
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            **self.extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)
