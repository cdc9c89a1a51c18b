"""The recipe's randomness drawn from the data and the step, not from the rank: SpecAugment time masks from (seed,
epoch, utterance id) and layerdrop from (seed, step), so 1, 2 and 4 ranks and an elastic resume train alike.

Real ranks through the trainer (fp32, dropout off): every per-step loss is compared with the 1-rank run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Model

from tests._resume import SAVE_AT, STEPS, Reference, assert_same_losses, stopped_copy, train
from tests._runs import metrics_by_step
from xlsr_dist.model import tiny_config

pytestmark = pytest.mark.slow

SPECAUGMENT = {"mask_time_prob": "0.05"}  # the reference recipe's value; the tiny model masks 5-frame spans
LAYERDROP_STEPS = 40


@pytest.fixture(scope="module")
def masked_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Reference]:
    runs = {}
    for world_size in (1, 2, 4):
        root = tmp_path_factory.mktemp(f"masked{world_size}")
        train(root / "out", root / "mlflow.db", world_size, root / "logs", **SPECAUGMENT)
        runs[world_size] = Reference(root / "out", root / "mlflow.db", metrics_by_step(root / "out", "loss"))
    return runs


def test_specaugment_gives_the_same_losses_on_1_2_and_4_ranks(
    masked_runs: dict[int, Reference], tmp_path: Path
) -> None:
    one = masked_runs[1].losses
    assert sorted(one) == list(range(1, STEPS + 1))
    for world_size in (2, 4):
        assert_same_losses(masked_runs[world_size].losses, one, range(1, STEPS + 1), f"SpecAugment 1 vs {world_size}")
    # ... and the masks are applied: without them the same run has other losses.
    train(tmp_path / "out", tmp_path / "mlflow.db", 1, tmp_path / "logs", mask_time_prob="0.0")
    unmasked = metrics_by_step(tmp_path / "out", "loss")
    assert all(unmasked[s] != pytest.approx(one[s], rel=1e-4) for s in range(1, STEPS + 1))


def test_specaugment_two_rank_checkpoint_resumed_on_four_ranks_equals_the_uninterrupted_run(
    masked_runs: dict[int, Reference], tmp_path: Path
) -> None:
    out, db = stopped_copy(masked_runs[2], tmp_path)
    output = train(out, db, 4, tmp_path / "logs", resume_from_checkpoint="latest", **SPECAUGMENT)
    assert "saved on 2 rank(s), continuing on 4 rank(s)" in output
    assert_same_losses(
        metrics_by_step(out, "loss"), masked_runs[2].losses, range(SAVE_AT + 1, STEPS + 1), "SpecAugment 2 -> 4"
    )


@pytest.fixture(scope="module")
def four_layer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained-style wav2vec2 (no CTC head) with 4 encoder layers, loaded through --model_name_or_path."""
    path = tmp_path_factory.mktemp("four_layers")
    torch.manual_seed(0)
    Wav2Vec2Model(tiny_config(num_hidden_layers=4)).save_pretrained(path)
    return path


def test_layerdrop_drops_the_same_layers_on_every_rank(four_layer_checkpoint: Path, tmp_path: Path) -> None:
    flags = {
        "architecture": "",
        "model_name_or_path": str(four_layer_checkpoint),
        "layerdrop": "0.2",
        "max_steps": str(LAYERDROP_STEPS),
        "eval_steps": str(LAYERDROP_STEPS),
        "save_steps": str(LAYERDROP_STEPS),
    }
    losses = {}
    for world_size in (1, 2):
        out = tmp_path / f"ranks{world_size}"
        train(out / "out", out / "mlflow.db", world_size, out / "logs", **flags)
        losses[world_size] = metrics_by_step(out / "out", "loss")
    assert sorted(losses[2]) == list(range(1, LAYERDROP_STEPS + 1)), "2 ranks ran every step (no hang, no failure)"
    assert_same_losses(losses[2], losses[1], range(1, LAYERDROP_STEPS + 1), "layerdrop 0.2, 1 vs 2 ranks")
