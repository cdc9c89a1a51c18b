"""One xlsr_dist rank under bench/train_speed.py: `python -m xlsr_dist.train`'s main(), unchanged, observed through
its step hooks (xlsr_dist.trainer.StepHooks), so xlsr_dist carries no benchmark code and nothing is patched.

    XLSR_BENCH_RECORD=rank0.json python bench/_xlsr_rank.py <xlsr_dist.train flags>

  - step_begin: a step boundary (so an interval is data + forward/backward/step + vote + bookkeeping, like the
    baseline's on_step_end to on_step_end); batches_ready: the step's data is in hand, and each micro-batch's ids
    and sizes are noted; step_end of the last step: the last boundary (before its log line, eval and save).
With XLSR_BENCH_PREDECODED=1 (train_speed.py's "decoded up front" side) the training data set's reads are served
from a cache this rank fills on its first read (step 1, left out of the measurement) by decoding every training
utterance, as the baseline's `.map` decodes its corpus before training: the steps are then timed without decoding,
and the fill's time is recorded on its own (decode_s, decode_utterances). That mode replaces one method of
xlsr_dist's UtteranceDataset in this process (the only patch; the default mode patches nothing).
With XLSR_BENCH_PROFILE=1 (--profile) it also splits each step into data wait, forward, backward, optimizer step,
the stop/non-finite vote and DeepSpeed's communication, synchronising the accelerator around each part: that mode
changes the timing it measures, so its steps are never used for the speed comparison.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import deepspeed.comm  # noqa: E402
import torch  # noqa: E402
from _record import PREDECODED_ENV, PROFILE_ENV, RECORD_ENV, StepRecorder  # noqa: E402

from xlsr_dist import train  # noqa: E402
from xlsr_dist.data import stream  # noqa: E402
from xlsr_dist.data.collate import Item, dummy_item  # noqa: E402
from xlsr_dist.data.partition import PADDING_SLOT  # noqa: E402
from xlsr_dist.training.trainer import StepHooks  # noqa: E402

# deepspeed.comm collectives ZeRO-2 runs (allgather_fn and reduce_scatter_fn log as the op they wrap). Only ops its
# comms logger can compute a bandwidth for: it exits the process on any other.
COLLECTIVES = (
    "all_reduce",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "broadcast",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_reduce_coalesced",
    "all_to_all_single",
    "barrier",
)


def rank_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class CommTimer:
    """DeepSpeed's collectives of each step, from its own comms logger (deepspeed.comm.configure / get_raw_data /
    reset_log), which synchronises the accelerator after each op.

    In deepspeed 0.19.8 the logger reads its per-op timers with elapsed(reset=False): each recorded latency is the
    running total of that op name so far, so a step's time is how much those totals grew. An async op (gloo on
    CPU) is timed as issued; on CUDA the synchronise after it waits for its kernels.
    """

    def __init__(self) -> None:
        self.totals_ms: dict[str, float] = {}

    def start(self) -> None:
        """From now on (DeepSpeed's set-up collectives, before the first step, are left out)."""
        deepspeed.comm.configure(enabled=True, prof_all=False, prof_ops=list(COLLECTIVES))
        deepspeed.comm.reset_log()

    def take(self) -> dict[str, float]:
        """Seconds in collectives and their count since the last take (or start)."""
        seconds, ops = 0.0, 0
        for name, by_size in deepspeed.comm.comms_logger.get_raw_data().items():
            total = max(max(record[1]) for record in by_size.values())
            seconds += (total - self.totals_ms.get(name, 0.0)) / 1e3
            self.totals_ms[name] = total
            ops += sum(record[0] for record in by_size.values())
        deepspeed.comm.reset_log()
        return {"comm": seconds, "comm_ops": float(ops)}

    def stop(self) -> None:
        deepspeed.comm.configure(enabled=False)


class BenchHooks(StepHooks):
    """Step boundaries and micro-batch contents into ``recorder``; with ``profile``, per-part times as well."""

    def __init__(self, recorder: StepRecorder, device: torch.device, profile: bool) -> None:
        self.recorder, self.device, self.profile = recorder, device, profile
        self.comm = CommTimer() if profile else None
        self.index = 0  # steps this process ran, from 0 (the record's step numbers)
        self.current: dict[str, float] = {}
        self.began = 0.0

    def sync(self) -> None:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_begin(self, step: int) -> None:
        self.recorder.start_memory_window(self.device)
        if self.comm is not None and self.index == 0:
            self.sync()
            self.comm.start()
        self.sync()
        self.recorder.boundary()
        self.began = time.perf_counter()

    def batches_ready(self, step: int, micro_batches: Sequence[dict[str, Any]]) -> None:
        self.recorder.batches_ready()
        if self.profile:
            self.current["data"] = time.perf_counter() - self.began
        for b in micro_batches:
            mask = b["attention_mask"]
            self.recorder.add_micro(
                self.index,
                b["ids"],
                b["real_samples"],
                int(mask.shape[0]),
                int(mask.shape[1]),
                int(b["labels"].shape[1]),
            )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - t0

    def step_end(self, step: int, last: bool) -> None:
        if self.comm is not None:
            self.sync()
            self.recorder.profile.append({**self.current, **self.comm.take()})
            self.current = {}
            if last:
                self.comm.stop()  # the eval and checkpoint collectives after the last step are not steps
        if last:
            self.recorder.boundary(last=True)
        self.index += 1


def serve_predecoded(recorder: StepRecorder) -> None:
    """XLSR_BENCH_PREDECODED=1: every UtteranceDataset read served from a cache of the whole data set, filled (and
    timed, the first data set only: the training one) at its first read."""
    read = stream.UtteranceDataset.__getitems__

    def cached(self: stream.UtteranceDataset, indices: Sequence[int]) -> list[Item]:
        cache: dict[int, Item] | None = self.__dict__.get("_bench_cache")
        if cache is None:
            started = time.perf_counter()
            every = list(range(len(self)))
            cache = {int(item_index): item for item_index, item in zip(every, read(self, every))}
            if len(cache) != len(every):
                raise SystemExit("predecoded mode: an utterance failed to decode; use the default mode")
            self.__dict__["_bench_cache"] = cache
            if "decode_s" not in recorder.extra:
                recorder.extra.update(
                    decode_s=time.perf_counter() - started,
                    decode_utterances=len(every),
                    decode_audio_s=sum(len(item[1]) for item in cache.values()) / 16000,
                )
        return [dummy_item() if int(i) == PADDING_SLOT else cache[int(i)] for i in indices]

    stream.UtteranceDataset.__getitems__ = cached  # type: ignore[method-assign]


def main(argv: list[str], make_hooks: Callable[[StepRecorder, torch.device, bool], BenchHooks] = BenchHooks) -> None:
    record = os.environ.get(RECORD_ENV, "")
    if not record:
        raise SystemExit(f"{RECORD_ENV} must name this rank's record file")
    recorder = StepRecorder(record, "xlsr_dist")
    device = rank_device()
    if os.environ.get(PREDECODED_ENV) == "1":
        serve_predecoded(recorder)
    try:
        train.main(argv, hooks=make_hooks(recorder, device, os.environ.get(PROFILE_ENV) == "1"))
    except SystemExit as exc:
        if exc.code in (0, None):
            recorder.write(device)
        raise
    recorder.write(device)


if __name__ == "__main__":
    main(sys.argv[1:])
