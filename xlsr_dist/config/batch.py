"""Batch arithmetic: how the global batch splits over ranks, micro-batches and gradient accumulation."""

from __future__ import annotations

from dataclasses import dataclass

from xlsr_dist.config.errors import ConfigError

# Largest micro-batch chosen automatically; a user may pick another with --per_device_train_batch_size.
DEFAULT_MAX_MICRO_BATCH = 4


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: global = micro x accumulation x world."""

    global_batch: int
    world_size: int
    micro_batch: int
    grad_accum: int

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.grad_accum


def valid_world_sizes(global_batch: int, max_world: int = 64) -> list[int]:
    return [w for w in range(1, max_world + 1) if global_batch % w == 0]


def plan_batches(global_batch: int, world_size: int, micro_batch: int = 0) -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` ranks exactly, or raise ConfigError saying what works.

    ``micro_batch`` 0 picks the largest divisor of the per-rank share up to DEFAULT_MAX_MICRO_BATCH
    (world 1 -> 4 x 2, 2 -> 4 x 1, 4 -> 2 x 1, 8 -> 1 x 1 for the reference 8).
    """
    if world_size < 1:
        raise ConfigError([f"world size {world_size}: must be >= 1"])
    if global_batch % world_size:
        works = ", ".join(str(w) for w in valid_world_sizes(global_batch))
        raise ConfigError(
            [
                f"world size {world_size} cannot keep --global_batch_size {global_batch} exactly "
                f"(each rank would get {global_batch / world_size:g} utterances). "
                f"Run on {works} ranks (GPUs) instead."
            ]
        )
    per_rank = global_batch // world_size
    if micro_batch == 0:
        micro_batch = max(m for m in range(1, min(per_rank, DEFAULT_MAX_MICRO_BATCH) + 1) if per_rank % m == 0)
    elif per_rank % micro_batch:
        choices = ", ".join(str(m) for m in range(1, per_rank + 1) if per_rank % m == 0)
        raise ConfigError(
            [
                f"--per_device_train_batch_size {micro_batch} does not divide the {per_rank} utterances each of "
                f"{world_size} rank(s) takes per step of {global_batch}; choose one of {choices}"
            ]
        )
    return BatchPlan(global_batch, world_size, micro_batch, per_rank // micro_batch)
