"""Speed perturbation and additive noise drawn from (seed, epoch, utterance id), over two weighted training sets
(--train_data 'A=0.7,B=0.3'): real ranks through the trainer log the same per-step losses on 1, 2 and 4 ranks (fp32,
dropout off, rel 1e-5), and a 2-rank checkpoint resumed on 4 ranks continues them. The 2-rank run decodes and augments
in a DataLoader worker, the others in the training process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests._dist import ROOT, base_env, run_ranks
from tests._resume import SAVE_AT, STEPS, Reference, assert_same_losses, stopped_copy, train
from tests._runs import DATA_CACHE, metrics_by_step, tiny_flags
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.config.tree import parse_train_sets
from xlsr_dist.data.demo import ensure_demo_corpus
from xlsr_dist.data.stream import set_names

pytestmark = pytest.mark.slow


def _augment_flags(noise_dir: Path) -> dict[str, str]:
    # Two demo corpora of other sizes and seeds: 96 + 40 utterances, mixed 0.7 / 0.3.
    a_train, a_eval = ensure_demo_corpus(DATA_CACHE, n_train=96, n_eval=16)
    b_train, _ = ensure_demo_corpus(DATA_CACHE, seed=7, n_train=40, n_eval=1)
    return {
        "train_data": f"{a_train}=0.7,{b_train}=0.3",
        "eval_data": str(a_eval),
        "speed_perturb_prob": "0.8",
        "speed_factors": "0.9,1.0,1.1",
        "noise_prob": "0.8",
        "noise_dir": str(noise_dir),
        "noise_snr_min_db": "0",
        "noise_snr_max_db": "10",
    }


def _set_names(train_data: str) -> list[str]:
    """The metric names of the sets, in --train_data's order."""
    return set_names([location for location, _ in parse_train_sets(train_data)])


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


def test_speed_noise_and_two_weighted_sets_give_the_same_losses_on_1_2_and_4_ranks(
    augmented_runs: tuple[dict[int, Reference], dict[str, str], str], tmp_path: Path
) -> None:
    runs, flags, output = augmented_runs
    assert "augmentation: speed x0.9/1/1.1 (p 0.8), noise from 3 file(s) (6 s) at SNR 0-10 dB (p 0.8)" in output
    assert "(96 utterances, p 0.700, 95 per epoch)" in output and "(40 utterances, p 0.300, 41 per epoch)" in output
    one = runs[1].losses
    assert sorted(one) == list(range(1, STEPS + 1))
    for world_size in (2, 4):
        assert_same_losses(runs[world_size].losses, one, range(1, STEPS + 1), f"augmented 1 vs {world_size}")
    # Each logged step (logging_steps 1) records each set's share of its global batch of 8.
    seen = [metrics_by_step(runs[1].out, f"data/{name}/utterances") for name in _set_names(flags["train_data"])]
    assert [seen[0][s] + seen[1][s] for s in range(1, STEPS + 1)] == [8.0] * STEPS
    assert 0 < sum(seen[1].values()) < sum(seen[0].values())
    # ... and the augmentation is applied: the same sets without it give other losses.
    sets = {"train_data": flags["train_data"], "eval_data": flags["eval_data"]}
    train(tmp_path / "out", tmp_path / "mlflow.db", 1, tmp_path / "logs", max_steps="2", **sets)
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


def test_bad_weight_and_unusable_noise_folder_stop_with_one_message_and_status_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.train", *tiny_flags(tmp_path / "out", "", report_to="none"),
         "--train_data", "a=0.7,b=0", "--eval_data", "c", "--noise_prob", "0.5"],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--train_data: 'b=0': weight 0 must be a number > 0" in proc.stderr
    assert "--noise_dir: empty; --noise_prob 0.5 needs a folder of audio files" in proc.stderr
    assert "Traceback" not in proc.stderr
    silent = tmp_path / "silent"
    silent.mkdir()
    sf.write(silent / "quiet.wav", np.zeros(SAMPLE_RATE, dtype="float32"), SAMPLE_RATE)
    flags = {"noise_prob": "0.5", "noise_dir": str(silent), "report_to": "none"}
    results = run_ranks(
        ["-m", "xlsr_dist.train", *tiny_flags(tmp_path / "out2", "", **flags)], 1, 300, log_dir=tmp_path / "logs"
    )
    assert results[0].returncode == 2, results[0].output[-3000:]
    assert f"--noise_dir {silent}: 1 recording(s), none usable" in results[0].output
    assert "Traceback" not in results[0].output
