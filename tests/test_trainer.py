"""The trainer's parts that need no process group: when a non-finite loss ends the run, the log/eval/save cadence,
and the train state a checkpoint carries."""

from __future__ import annotations

import logging

import pytest
import torch

from xlsr_dist.data.stream import STATE_VERSION, DataState
from xlsr_dist.training.best_checkpoint import BestTracker
from xlsr_dist.training.loop import NonFiniteGuard, NonFiniteLoss, due
from xlsr_dist.training.state import TrainState


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


def _state(step: int = 0, epoch: int = 0, run_id: str | None = None, world_size: int = 2) -> TrainState:
    data = DataState(STATE_VERSION, seed=42, epoch=epoch, step_in_epoch=step % 5, global_batch=8, fingerprint="f")
    return TrainState(step=step, data=data, best=BestTracker("eval_wer"), mlflow_run_id=run_id, world_size=world_size)


def test_train_state_saves_the_client_state_keys_checkpoints_hold() -> None:
    state = _state(step=12, epoch=2, run_id="abc")
    state.best.observe(12, {"eval_wer": 0.25})
    state.best.saved(12)
    assert state.state_dict() == {
        "step": 12,
        "data_state": {
            "version": STATE_VERSION,
            "seed": 42,
            "epoch": 2,
            "step_in_epoch": 2,
            "global_batch": 8,
            "fingerprint": "f",
        },
        "mlflow_run_id": "abc",
        "world_size": 2,
        "best": {"metric": "eval_wer", "step": 12, "value": 0.25},
    }
    assert list(state.state_dict()) == ["step", "data_state", "mlflow_run_id", "world_size", "best"]


def test_train_state_restores_what_it_saved_on_another_world_size() -> None:
    saved = _state(step=12, epoch=2, run_id="abc", world_size=2)
    saved.best.observe(10, {"eval_wer": 0.5})
    saved.best.saved(10)
    resumed = _state(world_size=4)
    resumed.load_state_dict(saved.state_dict(), complete_steps={10, 12}, same_run=True)
    assert (resumed.step, resumed.data, resumed.mlflow_run_id) == (12, saved.data, "abc")
    assert (resumed.best.step, resumed.world_size) == (10, 4)
    assert resumed.state_dict() == {**saved.state_dict(), "world_size": 4}


def test_train_state_from_another_run_starts_a_new_mlflow_run_and_drops_a_rotated_best() -> None:
    saved = _state(step=12, run_id="abc")
    saved.best.observe(10, {"eval_wer": 0.5})
    saved.best.saved(10)
    resumed = _state()
    resumed.load_state_dict(saved.state_dict(), complete_steps={12}, same_run=False)
    assert resumed.step == 12 and resumed.mlflow_run_id is None and resumed.best.step is None
