"""The trainer's parts that need no process group: when a non-finite loss ends the run, and the log/eval/save
cadence."""

from __future__ import annotations

import logging

import pytest
import torch

from xlsr_dist.training.trainer import NonFiniteGuard, NonFiniteLoss, due


def _micro(ids: list[str], bad: list[bool]) -> list[dict]:
    return [{"ids": ids, "nonfinite": torch.tensor(bad)}]


def test_fp32_stops_at_the_first_non_finite_loss_naming_this_ranks_utterances(caplog: pytest.LogCaptureFixture) -> None:
    guard = NonFiniteGuard("fp32", max_skips=5)
    guard.check(1, nonfinite_anywhere=False, skipped=False, micro_batches=_micro(["a", "b"], [False, False]))
    with caplog.at_level(logging.ERROR, logger="xlsr_dist"), pytest.raises(NonFiniteLoss, match="at step 2 \\(fp32\\)"):
        guard.check(2, nonfinite_anywhere=True, skipped=False, micro_batches=_micro(["a", "b"], [False, True]))
    assert "for utterances: b" in caplog.text


def test_a_non_finite_loss_on_another_rank_stops_this_one_too() -> None:
    guard = NonFiniteGuard("bf16", max_skips=5)
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        guard.check(7, nonfinite_anywhere=True, skipped=False, micro_batches=_micro(["a"], [False]))


def test_fp16_tolerates_overflow_skips_until_too_many_in_a_row() -> None:
    guard = NonFiniteGuard("fp16", max_skips=3)
    clean = _micro(["a"], [False])
    for step in (1, 2):
        guard.check(step, nonfinite_anywhere=True, skipped=True, micro_batches=_micro(["a"], [True]))
    guard.check(3, nonfinite_anywhere=False, skipped=False, micro_batches=clean)  # a step taken resets the count
    for step in (4, 5):
        guard.check(step, nonfinite_anywhere=False, skipped=True, micro_batches=clean)
    with pytest.raises(NonFiniteLoss, match="3 consecutive fp16 overflow steps up to step 6"):
        guard.check(6, nonfinite_anywhere=False, skipped=True, micro_batches=clean)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 7 \\(fp16\\)"):
        guard.check(7, nonfinite_anywhere=True, skipped=True, micro_batches=_micro(["a"], [True]))


def test_log_eval_and_save_fall_on_every_interval_and_on_the_last_step() -> None:
    assert [s for s in range(1, 11) if due(s, 4, total_steps=10)] == [4, 8, 10]
    assert [s for s in range(1, 7) if due(s, 1, total_steps=6)] == [1, 2, 3, 4, 5, 6]
    assert [s for s in range(1, 6) if due(s, 10**9, total_steps=5)] == [5]
