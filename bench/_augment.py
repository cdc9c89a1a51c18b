"""The augmentation part of bench/data_path.py (--augment): one epoch of TrainStream with each augmentation on vs
off, at world size 1 and as rank 3 of 8 after start-up, in audio seconds per CPU second of this one process.

Noise: 4 files of 30 s of pink-ish noise; RIR: 3 synthetic 0.4 s exponentially decaying responses. Every
probability is 1.0, so every utterance pays for the augmentation it names (the worst case of that setting).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from xlsr_dist.audio import SAMPLE_RATE

SETTINGS: dict[str, dict[str, Any]] = {
    "off": {},
    "speed": {"speed_perturb_prob": 1.0, "speed_factors": "0.9,1.1"},
    "noise": {"noise_prob": 1.0},
    "rir": {"rir_prob": 1.0},
    "gain": {"gain_prob": 1.0},
    "speed + noise": {"speed_perturb_prob": 1.0, "speed_factors": "0.9,1.1", "noise_prob": 1.0},
}


def make_folders(root: Path, seed: int = 0) -> tuple[str, str]:
    """(noise folder, RIR folder) of synthetic files."""
    rng = np.random.default_rng(seed)
    noise, rir = root / "noise", root / "rir"
    noise.mkdir(parents=True)
    rir.mkdir(parents=True)
    for k in range(4):
        white = rng.standard_normal(30 * SAMPLE_RATE)
        pink = np.cumsum(white) * 0.02 + white  # some low-frequency weight
        pink -= pink.mean()
        sf.write(noise / f"noise{k}.flac", (0.1 * pink / np.abs(pink).max()).astype(np.float32), SAMPLE_RATE)
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    for k in range(3):
        response = rng.standard_normal(len(t)) * np.exp(-t / (0.05 + 0.05 * k))
        sf.write(rir / f"room{k}.wav", (0.5 * response / np.abs(response).max()).astype(np.float32), SAMPLE_RATE)
    return str(noise), str(rir)


def results(
    measure: Callable[[dict[str, Any], int, int], dict[str, Any]], folders: tuple[str, str]
) -> dict[str, dict[str, Any]]:
    """{setting: {"world 1": rates, "rank 3 of 8": rates}}; ``measure(data_overrides, world_size, rank)`` times one
    epoch after the stream's start-up."""
    noise, rir = folders
    out: dict[str, dict[str, Any]] = {}
    for name, overrides in SETTINGS.items():
        fields = {**overrides, "noise_dir": noise, "rir_dir": rir}
        out[name] = {"world 1": measure(fields, 1, 0), "rank 3 of 8": measure(fields, 8, 3)}
        print("augmentation", name, out[name], flush=True)
    return out


def report(r: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| augmentation (p 1.0) | world 1: audio-s per CPU-s (best) | vs off | rank 3 of 8: audio-s per CPU-s (best) "
        "| vs off |",
        "|---|---|---|---|---|",
    ]
    off1, off8 = r["off"]["world 1"]["cpu_best"], r["off"]["rank 3 of 8"]["cpu_best"]
    for name, v in r.items():
        one, eight = v["world 1"]["cpu_best"], v["rank 3 of 8"]["cpu_best"]
        lines.append(f"| {name} | {one:.0f} | {one / off1:.2f}x | {eight:.0f} | {eight / off8:.2f}x |")
    return "\n".join(lines)
