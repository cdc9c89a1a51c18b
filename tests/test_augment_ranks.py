"""Speed perturbation and additive noise drawn from (seed, epoch, utterance id): real ranks through the trainer log the
same per-step losses on 1, 2 and 4 ranks (fp32, dropout off, rel 1e-5), and a 2-rank checkpoint resumed on 4 ranks
continues them. The 2-rank run decodes and augments in a DataLoader worker, the others in the training process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests._resume import SAVE_AT, STEPS, Reference, assert_same_losses, stopped_copy, train
from tests._runs import metrics_by_step
from xlsr_dist.audio import SAMPLE_RATE

pytestmark = pytest.mark.slow


def _augment_flags(noise_dir: Path) -> dict[str, str]:
    return {
        "speed_perturb_prob": "0.8",
        "speed_factors": "0.9,1.0,1.1",
        "noise_prob": "0.8",
        "noise_dir": str(noise_dir),
        "noise_snr_min_db": "0",
        "noise_snr_max_db": "10",
    }


@pytest.fixture(scope="module")
def augmented_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, Reference], dict[str, str], str]:
    noise_dir = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(7)
    for k in range(3):
        sf.write(noise_dir / f"n{k}.wav", (0.2 * rng.standard_normal(SAMPLE_RATE * (k + 1))).astype("float32"), 16000)
    flags = _augment_flags(noise_dir)
    runs, output = {}, ""
    for world_size in (1, 2, 4):
        root = tmp_path_factory.mktemp(f"augmented{world_size}")
        workers = "1" if world_size == 2 else "0"
        log = train(
            root / "out", root / "mlflow.db", world_size, root / "logs", dataloader_num_workers=workers, **flags
        )
        output = output or log
        runs[world_size] = Reference(root / "out", root / "mlflow.db", metrics_by_step(root / "out", "loss"))
    return runs, flags, output


def test_speed_and_noise_give_the_same_losses_on_1_2_and_4_ranks(
    augmented_runs: tuple[dict[int, Reference], dict[str, str], str], tmp_path: Path
) -> None:
    runs, _, output = augmented_runs
    assert "augmentation: speed x0.9/1/1.1 (p 0.8), noise from 3 file(s) (6 s) at SNR 0-10 dB (p 0.8)" in output
    one = runs[1].losses
    assert sorted(one) == list(range(1, STEPS + 1))
    for world_size in (2, 4):
        assert_same_losses(runs[world_size].losses, one, range(1, STEPS + 1), f"augmented 1 vs {world_size}")
    # ... and the augmentation is applied: without it the first steps have other losses.
    train(tmp_path / "out", tmp_path / "mlflow.db", 1, tmp_path / "logs", max_steps="2")
    plain = metrics_by_step(tmp_path / "out", "loss")
    assert all(plain[s] != pytest.approx(one[s], rel=1e-4) for s in (1, 2))


def test_augmented_two_rank_checkpoint_resumed_on_four_ranks_continues_the_losses(
    augmented_runs: tuple[dict[int, Reference], dict[str, str], str], tmp_path: Path
) -> None:
    runs, flags, _ = augmented_runs
    out, db = stopped_copy(runs[2], tmp_path)
    output = train(out, db, 4, tmp_path / "logs", resume_from_checkpoint="latest", **flags)
    assert "saved on 2 rank(s), continuing on 4 rank(s)" in output
    assert_same_losses(metrics_by_step(out, "loss"), runs[2].losses, range(SAVE_AT + 1, STEPS + 1), "augmented 2->4")
