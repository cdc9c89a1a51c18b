"""Training augmentation (xlsr_dist/data/augment.py): each draw a function of (seed, epoch, utterance id) alone, the
CTC frame budget kept under speed perturbation, noise at the drawn SNR, and one clear message for each bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.test_stream import _rows, _write, frames
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.config import ConfigError, DataConfig, parse_args, plan_batches
from xlsr_dist.data.augment import Augmentation, add_noise, reverberate
from xlsr_dist.data.problems import DataProblem
from xlsr_dist.data.stream import EvalStream, TrainStream
from xlsr_dist.text import build_vocab
from xlsr_dist.world import World


def _speech(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture()
def noise_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "noise"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    sf.write(folder / "a.wav", (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    # 8 kHz and nested: resampled to 16 kHz on reading, found recursively.
    sf.write(folder / "sub" / "b.flac", (0.1 * rng.standard_normal(12000)).astype(np.float32), 8000)
    return folder


def _augmentation(noise_dir: Path, **fields: object) -> Augmentation:
    values = {"speed_perturb_prob": 1.0, "noise_prob": 1.0, "noise_dir": str(noise_dir), **fields}
    aug = Augmentation.from_config(dataclasses.replace(DataConfig(), **values), seed=42)
    assert aug is not None
    return aug


def test_off_by_default() -> None:
    assert Augmentation.from_config(DataConfig(), seed=42) is None


def test_each_draw_depends_on_seed_epoch_and_id_only(noise_dir: Path) -> None:
    aug = _augmentation(noise_dir)
    wave, labels = _speech(), [1, 2, 3]
    first = aug.apply(0, "utt-1", wave, labels, frames)
    again = _augmentation(noise_dir).apply(0, "utt-1", wave.copy(), labels, frames)
    np.testing.assert_array_equal(first, again)
    assert len(first) != len(wave) or not np.allclose(first, wave), "noise is always added here"
    others = [aug.apply(e, u, wave, labels, frames) for e, u in ((1, "utt-1"), (0, "utt-2"))]
    assert all(len(o) != len(first) or not np.allclose(o, first) for o in others)


def test_speed_factors_change_the_length_by_their_inverse(noise_dir: Path) -> None:
    aug = _augmentation(noise_dir, noise_prob=0.0, speed_factors="0.9,1.1")
    wave = _speech(2.0)
    lengths = {}
    for k in range(40):
        factor = aug.speed_factor(3, f"u{k}")
        lengths[factor] = len(aug.apply(3, f"u{k}", wave, [1], frames))
    assert set(lengths) == {0.9, 1.1}, "both factors are drawn over 40 utterances"
    for factor, n in lengths.items():
        assert n == pytest.approx(len(wave) / factor, abs=2)


def test_a_speed_change_that_breaks_the_ctc_budget_is_not_applied(noise_dir: Path) -> None:
    aug = _augmentation(noise_dir, noise_prob=0.0, speed_factors="1.5")
    wave = _speech(1.0)  # 50 frames; 1.5x faster leaves 33
    labels = list(range(1, 41))  # needs 40 frames
    assert aug.speed_factor(0, "u") == 1.5
    assert len(aug.apply(0, "u", wave, labels, frames)) == len(wave)
    assert len(aug.apply(0, "u", wave, labels[:20], frames)) == pytest.approx(len(wave) / 1.5, abs=2)


def test_noise_is_added_at_an_snr_in_the_range() -> None:
    wave = _speech(1.0)
    noise = np.random.default_rng(5).standard_normal(3000).astype(np.float32)  # shorter: looped
    for k in range(10):
        rng = np.random.default_rng(k)
        snr = np.random.default_rng(k).uniform(5.0, 10.0)  # add_noise's first draw
        noisy = add_noise(wave, noise, rng, (5.0, 10.0))
        added = noisy - wave
        measured = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
        assert measured == pytest.approx(snr, abs=0.01)
        assert 5.0 <= measured <= 10.0 + 0.01


def test_reverberation_keeps_length_and_a_unit_impulse_keeps_the_wave() -> None:
    wave = _speech(0.5)
    impulse = np.zeros(400, dtype=np.float32)
    impulse[0] = 1.0
    np.testing.assert_allclose(reverberate(wave, impulse), wave, atol=1e-5)
    decaying = (np.exp(-np.arange(800) / 100.0) * np.random.default_rng(0).standard_normal(800)).astype(np.float32)
    assert len(reverberate(wave, decaying)) == len(wave)


def test_rir_and_gain_apply_when_drawn(noise_dir: Path, tmp_path: Path) -> None:
    rir = tmp_path / "rir"
    rir.mkdir()
    sf.write(rir / "room.wav", np.exp(-np.arange(1600) / 200.0).astype(np.float32), SAMPLE_RATE)
    aug = _augmentation(noise_dir, speed_perturb_prob=0.0, noise_prob=0.0, rir_prob=1.0, rir_dir=str(rir))
    wave = _speech(1.0)
    assert not np.allclose(aug.apply(0, "u", wave, [1], frames), wave)
    gain = _augmentation(
        noise_dir, speed_perturb_prob=0.0, noise_prob=0.0, gain_prob=1.0, gain_min_db=20.0, gain_max_db=20.0
    )
    out = gain.apply(0, "u", wave, [1], frames)
    assert np.abs(out).max() == pytest.approx(1.0), "+20 dB clips at full scale"


def test_noise_folder_without_usable_file_is_one_problem(tmp_path: Path) -> None:
    folder = tmp_path / "noise"
    folder.mkdir()
    (folder / "readme.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF....WAVE")
    sf.write(folder / "silent.wav", np.zeros(1600, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(DataProblem) as info:
        Augmentation.from_config(dataclasses.replace(DataConfig(), noise_prob=0.5, noise_dir=str(folder)), seed=1)
    assert info.value.flag == "--noise_dir"
    assert "2 recording(s), none usable" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataProblem, match="--rir_dir .*: no audio file"):
        Augmentation.from_config(dataclasses.replace(DataConfig(), rir_prob=0.5, rir_dir=str(empty)), seed=1)


def test_noise_shards_from_prepare_give_the_folders_recordings(tmp_path: Path) -> None:
    """A noise folder prepared into shards (`prepare --layout audio`, as for MUSAN's noise/) serves as --noise_dir."""
    from xlsr_dist.data.augment import load_folder
    from xlsr_dist.prepare import run

    folder = tmp_path / "musan" / "noise" / "free-sound"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        sf.write(folder / f"noise-{i}.flac", (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
    run(["--layout", "audio", "--input", str(tmp_path / "musan" / "noise"), "--output", str(tmp_path / "shards")])
    from_shards = load_folder(str(tmp_path / "shards" / "train"), "--noise_dir", 1)
    from_folder = load_folder(str(tmp_path / "musan" / "noise"), "--noise_dir", 1)
    assert sorted(len(w) for w in from_shards) == [16000, 20000, 24000]
    by_length = {len(w): w for w in from_folder}
    for wave in from_shards:
        np.testing.assert_allclose(wave, by_length[len(wave)], atol=1e-4)  # FLAC in the shard: 16-bit samples
    aug = Augmentation.from_config(
        dataclasses.replace(DataConfig(), noise_prob=0.5, noise_dir=str(tmp_path / "shards" / "train")), seed=1
    )
    assert len(aug.noises) == 3


def test_bad_augmentation_flags_are_named_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(
            [
                "--speed_perturb_prob", "1.5",
                "--speed_factors", "0.9,fast,-1",
                "--noise_prob", "0.5",
                "--noise_snr_min_db", "20", "--noise_snr_max_db", "5",
                "--rir_prob", "0.3", "--rir_dir", str(tmp_path / "missing"),
            ]
        )  # fmt: skip
    text = str(info.value)
    for expected in (
        "--speed_perturb_prob: 1.5 must be in [0, 1]",
        "--speed_factors: 'fast', '-1' not a positive number",
        "--noise_dir: empty; --noise_prob 0.5 needs a folder of audio files",
        "--noise_snr_min_db/--noise_snr_max_db: 20.0 .. 5.0 must be finite, the lowest first",
        f"--rir_dir: {tmp_path / 'missing'} is not a directory",
    ):
        assert expected in text


def test_training_items_are_augmented_and_eval_items_never(tmp_path: Path) -> None:
    rows = _rows(16)
    location = _write(tmp_path / "split", rows, 2)
    vocab = build_vocab(r["text"] for r in rows)
    speed = {"speed_perturb_prob": 1.0, "speed_factors": "1.25", "dataloader_num_workers": 0}
    world, plan = World(rank=0, world_size=1), plan_batches(8, 1)

    def train_samples(**fields: Any) -> int:
        stream = TrainStream(location, world, plan, 3, vocab, DataConfig(**fields), frames)
        _, micro = next(stream.steps(stream.initial_state()))
        return sum(b["real_samples"] for b in micro)

    plain, faster = train_samples(dataloader_num_workers=0), train_samples(**speed)
    assert faster == pytest.approx(plain / 1.25, rel=1e-3)
    evaluated = EvalStream(location, world, 4, vocab, DataConfig(**speed), frames)
    assert sum(b["real_samples"] for b in evaluated) == sum(round(r["duration"] * SAMPLE_RATE) for r in rows)
