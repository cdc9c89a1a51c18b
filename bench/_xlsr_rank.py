"""One xlsr_dist rank under bench/train_speed.py: `python -m xlsr_dist.train`'s main(), unchanged, with timing taps.

    XLSR_BENCH_RECORD=rank0.json python bench/_xlsr_rank.py <xlsr_dist.train flags>

The taps wrap module attributes the loop looks up at call time, so xlsr_dist carries no benchmark code:
  - TrainStream.steps: a step boundary is taken when the loop asks for the next step's batches (so an interval is
    data + forward/backward/step + vote + bookkeeping, like the baseline's on_step_end to on_step_end), and each
    micro-batch's ids and sizes are noted;
  - train._log: with --logging_steps = --max_steps it runs once, right after the last step: the last boundary.
With XLSR_BENCH_PROFILE=1 (--profile) it also splits each step into data wait, forward, backward, optimizer step,
the stop/non-finite vote and DeepSpeed's communication, synchronising the accelerator around each part: that mode
changes the timing it measures, so its steps are never used for the speed comparison.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _record import PROFILE_ENV, RECORD_ENV, StepRecorder  # noqa: E402

PROFILE_PARTS = ("data", "forward", "backward", "optimizer", "vote", "comm")


def rank_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Profiler:
    """Per-step wall time of each part of xlsr_dist's step, with the accelerator synchronised around each part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.current[part] = self.current.get(part, 0.0) + time.perf_counter() - t0

        return wrapper

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


def comm_seconds() -> tuple[float, int]:
    """Total time (s) and count of the collectives DeepSpeed's comms logger has recorded so far."""
    from deepspeed.comm import comm as ds_comm

    total_ms, count = 0.0, 0
    for sizes in ds_comm.comms_logger.comms_dict.values():
        for entry in sizes.values():
            count += int(entry[0])
            total_ms += float(sum(entry[1]))
    return total_ms / 1000.0, count


def install(recorder: StepRecorder, profile: bool) -> None:
    import xlsr_dist.train as train_mod
    from xlsr_dist import engine as engine_mod
    from xlsr_dist import world as world_mod
    from xlsr_dist.data import stream as stream_mod

    device = rank_device()
    prof = Profiler(device) if profile else None
    original_steps = stream_mod.TrainStream.steps
    comm_before = [0.0, 0]

    def steps(self: Any, state: Any) -> Iterator[Any]:
        inner = original_steps(self, state)
        step = 0
        while True:
            recorder.start_memory_window(device)
            if prof is not None:
                prof.sync()
                _close_profile_step()
            recorder.boundary()
            t0 = time.perf_counter()
            try:
                new_state, micro = next(inner)
            except StopIteration:
                return
            if prof is not None:
                prof.current["data"] = time.perf_counter() - t0
            for b in micro:
                mask = b["attention_mask"]
                recorder.add_micro(step, b["ids"], b["real_samples"], int(mask.shape[0]), int(mask.shape[1]),
                                   int(b["labels"].shape[1]))
            yield new_state, micro
            step += 1

    def _close_profile_step() -> None:
        assert prof is not None
        if not prof.current:
            return
        total, count = comm_seconds()
        part = prof.take()
        part["comm"] = total - comm_before[0]
        part["comm_ops"] = float(count - comm_before[1])
        comm_before[0], comm_before[1] = total, count
        recorder.profile.append(part)

    stream_mod.TrainStream.steps = steps  # type: ignore[method-assign]

    original_log = train_mod._log

    def log_tap(*args: Any, **kwargs: Any) -> Any:
        if prof is not None:
            prof.sync()
            _close_profile_step()
        recorder.boundary()
        return original_log(*args, **kwargs)

    train_mod._log = log_tap  # type: ignore[assignment]

    if prof is None:
        return

    original_initialize = engine_mod.initialize

    def initialize(*args: Any, **kwargs: Any) -> Any:
        engine = original_initialize(*args, **kwargs)
        # Instance attributes shadow the class's methods; nn.Module.__call__ looks up self.forward each call.
        engine.forward = prof.timed("forward", engine.forward)
        engine.backward = prof.timed("backward", engine.backward)
        engine.step = prof.timed("optimizer", engine.step)
        import deepspeed.comm as ds_comm

        # Every DeepSpeed collective is timed (and made blocking) from here on: ZeRO-2's gradient reduce-scatter
        # inside backward and the all-gather of updated partitions inside step; the time is part of those parts.
        ds_comm.configure(enabled=True, prof_all=True, verbose=False)
        return engine

    engine_mod.initialize = initialize  # type: ignore[assignment]
    world_mod.all_reduce_max = prof.timed("vote", world_mod.all_reduce_max)  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    record = os.environ.get(RECORD_ENV, "")
    if not record:
        raise SystemExit(f"{RECORD_ENV} must name this rank's record file")
    recorder = StepRecorder(record, "xlsr_dist")
    install(recorder, os.environ.get(PROFILE_ENV) == "1")
    import xlsr_dist.train as train_mod

    try:
        train_mod.main(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            recorder.write(rank_device())
        raise
    recorder.write(rank_device())


if __name__ == "__main__":
    main(sys.argv[1:])
