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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from _record import PROFILE_ENV, RECORD_ENV, StepRecorder  # noqa: E402


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


COLLECTIVES = (
    "all_reduce",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "allgather_fn",
    "broadcast",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_fn",
    "all_reduce_coalesced",
    "all_to_all_single",
    "barrier",
)


def time_collectives(prof: Profiler) -> None:
    """Time every deepspeed.comm collective ZeRO calls (``dist.<op>`` is looked up at call time), synchronised.

    Not DeepSpeed's comms_logger: in 0.19.8 it reads its timers with elapsed(reset=False), so each recorded latency
    is the running total of that op so far. Nested calls (reduce_scatter_fn -> reduce_scatter_tensor) count once.
    An async op (gloo on CPU) is timed as issued; on CUDA the synchronise after it waits for its kernels.
    """
    import deepspeed.comm as ds_comm

    depth = [0]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            prof.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                prof.sync()
                prof.current["comm"] = prof.current.get("comm", 0.0) + time.perf_counter() - t0
                prof.current["comm_ops"] = prof.current.get("comm_ops", 0.0) + 1.0
                depth[0] -= 1

        return wrapper

    for name in COLLECTIVES:
        if hasattr(ds_comm, name):
            setattr(ds_comm, name, wrap(getattr(ds_comm, name)))


def install(recorder: StepRecorder, profile: bool) -> None:
    import xlsr_dist.train as train_mod
    from xlsr_dist import engine as engine_mod
    from xlsr_dist import world as world_mod
    from xlsr_dist.data import stream as stream_mod

    device = rank_device()
    prof = Profiler(device) if profile else None
    original_steps = stream_mod.TrainStream.steps

    def steps(self: Any, state: Any) -> Iterator[Any]:
        inner = original_steps(self, state)
        step = 0
        while True:
            recorder.start_memory_window(device)
            if prof is not None:
                prof.sync()
                if step == 0:
                    prof.take()  # DeepSpeed's set-up collectives, before the first step
                else:
                    _close_profile_step()
            recorder.boundary()
            t0 = time.perf_counter()
            try:
                new_state, micro = next(inner)
            except StopIteration:
                return
            recorder.batches_ready()
            if prof is not None:
                prof.current["data"] = time.perf_counter() - t0
            for b in micro:
                mask = b["attention_mask"]
                recorder.add_micro(
                    step, b["ids"], b["real_samples"], int(mask.shape[0]), int(mask.shape[1]), int(b["labels"].shape[1])
                )
            yield new_state, micro
            step += 1

    def _close_profile_step() -> None:
        assert prof is not None
        if prof.current:
            recorder.profile.append(prof.take())

    stream_mod.TrainStream.steps = steps  # type: ignore[method-assign]

    original_log = train_mod._log

    def log_tap(*args: Any, **kwargs: Any) -> Any:
        if prof is not None:
            prof.sync()
            _close_profile_step()
        recorder.boundary(last=True)
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
        return engine

    engine_mod.initialize = initialize  # type: ignore[assignment]
    # ZeRO-2's gradient reductions (inside backward) and the all-gather of updated partitions (inside step): their
    # time is part of those parts, shown apart as "comm".
    time_collectives(prof)
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
