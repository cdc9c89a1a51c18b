"""Corpora for bench/train_speed.py, generated once into a cache and reused.

  demo        xlsr_dist's own demo corpus (synthetic spoken English, ~0.7-3 s): what the tiny model is made for.
  uniform     utterances with durations drawn uniformly from [lo, hi] s (e.g. 4-6 s for the GPU comparison):
              harmonic "voiced" sound under a syllable-rate envelope plus noise, with a random transcript of about
              10 characters per second (alignable for XLSR-53's 50 frames/s and the tiny model's 100).
Speed does not depend on what the audio says, only on its length; FLAC decode cost per second is speech-like.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_dist.audio import SAMPLE_RATE, encode_flac
from xlsr_dist.data import demo, shards

UNIFORM_VERSION = 1


@dataclass(frozen=True)
class CorpusSpec:
    kind: str  # "demo" or "uniform"
    n_train: int
    lo_s: float = 0.0
    hi_s: float = 0.0
    n_eval: int = 16
    seed: int = 42

    def describe(self) -> str:
        if self.kind == "demo":
            return f"xlsr_dist demo corpus, {self.n_train} train utterances"
        return f"synthetic, {self.n_train} utterances of {self.lo_s:g}-{self.hi_s:g} s (uniform)"


def parse_corpus(text: str, n_train: int) -> CorpusSpec:
    """'demo' or 'uniform:LO-HI' (seconds) -> CorpusSpec; raises ValueError naming --corpus."""
    if text == "demo":
        return CorpusSpec("demo", n_train)
    match = re.fullmatch(r"uniform:([0-9.]+)-([0-9.]+)", text)
    if not match:
        raise ValueError(f"--corpus {text!r}: expected 'demo' or 'uniform:LO-HI' (seconds, e.g. uniform:4-6)")
    lo, hi = float(match.group(1)), float(match.group(2))
    if not 0.2 <= lo <= hi <= 30.0:
        raise ValueError(f"--corpus {text!r}: need 0.2 <= LO <= HI <= 30 seconds")
    return CorpusSpec("uniform", n_train, lo, hi)


def cache_root() -> Path:
    return demo.default_cache_dir() / "bench"


def ensure(spec: CorpusSpec, root: Path | None = None) -> tuple[Path, Path]:
    """(train_dir, eval_dir) of ``spec``, generating it on first use."""
    root = Path(root) if root is not None else cache_root()
    if spec.kind == "demo":
        return demo.ensure_demo_corpus(root, seed=spec.seed, n_train=spec.n_train, n_eval=spec.n_eval)
    name = f"uniform-v{UNIFORM_VERSION}-{spec.lo_s:g}-{spec.hi_s:g}s-{spec.n_train}-{spec.n_eval}-seed{spec.seed}"
    final = root / name
    if not (final / "eval" / shards.MANIFEST).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not (final / "eval" / shards.MANIFEST).is_file():
                    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
                    try:
                        _write_uniform(tmp / "train", spec, "train", spec.n_train)
                        _write_uniform(tmp / "eval", spec, "eval", spec.n_eval)
                        if final.exists():
                            shutil.rmtree(final)
                        os.rename(tmp, final)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return final / "train", final / "eval"


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 230) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    return (0.15 * envelope * voiced + 0.01 * rng.standard_normal(n)).astype(np.float32)


def transcript(seconds: float, rng: np.random.Generator) -> str:
    words: list[str] = []
    target = max(3, int(seconds * 10))
    while sum(len(w) + 1 for w in words) < target:
        words.append(demo.WORDS[int(rng.integers(len(demo.WORDS)))])
    return " ".join(words)


def _write_uniform(split_dir: Path, spec: CorpusSpec, split: str, count: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1 if split == "train" else 2]))
    rows = []
    for i in range(count):
        seconds = float(rng.uniform(spec.lo_s, spec.hi_s))
        wave = speech_like(seconds, rng)
        rows.append(
            {
                "id": f"bench-{split}-{i:06d}",
                "audio": encode_flac(wave),
                "text": transcript(seconds, rng),
                "duration": wave.shape[0] / SAMPLE_RATE,
                "source": f"bench:uniform:{spec.lo_s:g}-{spec.hi_s:g}",
            }
        )
    per_shard = 250
    num = max(1, -(-count // per_shard))
    bounds = np.linspace(0, count, num + 1).astype(int)
    for s in range(num):
        shards.write_shard(split_dir / shards.shard_name(s, num), rows[bounds[s] : bounds[s + 1]])
    shards.write_manifest(split_dir, extra={"bench": json.loads(json.dumps(spec.__dict__))})
