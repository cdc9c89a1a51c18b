"""The embedded demo corpus: synthetic "spoken" English the project generates itself, so the first command works
with no download and a tiny model visibly learns it on a CPU.

Each letter of a word is a ~70 ms segment of formant-like sound: three sinusoidal "formants" with letter-specific
frequencies, amplitude-modulated by a glottal pulse train for voiced letters (vowels, voiced consonants) or by
low-passed noise for unvoiced ones (fricatives, and plosives: louder, other formants); a raised-cosine envelope
marks each letter so doubled letters stay two segments. An utterance is 1-3 words, separated by pauses (90-150
ms) longer than the silence at either end (20-60 ms), with the background noise faded in and out. Speakers differ
in pitch, formant scale (vocal-tract length), letter duration and spectral tilt; utterances in speed, level and
background noise (SNR). The eval split uses held-out speakers and its own random stream, over the same word list.

Every row is a pure function of (seed, split, index): ids, texts and durations are identical on every machine and
rank, and so is the audio up to float rounding differences between CPUs' math libraries.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_dist.atomic import replacing_dir
from xlsr_dist.audio import SAMPLE_RATE, encode_flac
from xlsr_dist.data import shards

# Bump when the synthesiser or layout changes: the cache directory name includes it, so old corpora are not reused.
GENERATOR_VERSION = 3
TRAIN_SPEAKERS = 48
EVAL_SPEAKERS = 12
MIN_WORDS, MAX_WORDS = 1, 3
UTTERANCES_PER_SHARD = 250
MAX_SHARDS = 8
_SPLIT_CODES = {"train": 1, "eval": 2}

# Common short English words; together they use all 26 letters, so the vocabulary is the full alphabet.
WORDS: tuple[str, ...] = tuple(
    """
the of and to in is you that it he was for on are as with his they at be this have from or one had by word but
not what all were we when your can said there use an each which she do how their if will up other about out many
then them these so some her would make like him into time has look two more write go see number no way could
people my than first water been call who its now find long down day did get come made may part over new sound take
only little work know place year live me back give most very after thing our just name good man think say great
where help through much before line right too mean old any same tell boy follow came want show also around form
three small set put end does another well large must big even such because turn here why ask went men read need
land different home us move try kind hand picture again change off play spell air away animal house point page
letter mother answer found study still learn should world high every near add food between own below country plant
last school father keep tree never start city earth eye light thought head under story saw left few while along
might close something seem next hard open example begin life always those both paper together got group often run
quiz queen quick box six fox fix zoo zero size jump joy job jet judge jar yes yellow yard wax zip quite
""".split()
)

_VOWELS = "aeiouy"
_VOICED_CONSONANTS = "bdgjlmnrvwz"
_FRICATIVES = "cfhsx"
_PLOSIVES = "kpqt"


@dataclass(frozen=True)
class Letter:
    formants: tuple[float, float, float]  # Hz, before the speaker's formant scaling
    gains: tuple[float, float, float]
    voiced: float  # 1 = glottal pulses, 0 = noise; in between = both (voiced fricatives)
    level: float  # relative loudness
    closure: float  # leading fraction of the segment that is silent (plosives)


def _letter_table() -> dict[str, Letter]:
    """Letter -> acoustic recipe. Formant triples are spread apart in log-frequency (greedy farthest point over a
    fixed candidate set, across all letters) so a +-10% speaker scaling does not turn one letter into another."""
    rng = np.random.default_rng(20240601)  # fixed: the letters' sounds never depend on the corpus seed
    classes = [
        # letters, F1 range, F2 range, F3 range, voiced, level, closure, formant gains
        (_VOWELS, (250, 900), (800, 2500), (2200, 3400), 1.0, 1.0, 0.0, (1.0, 0.6, 0.35)),
        (_VOICED_CONSONANTS, (180, 500), (700, 2200), (2000, 3600), 1.0, 0.55, 0.0, (1.0, 0.5, 0.4)),
        (_FRICATIVES, (1200, 3000), (2600, 5200), (4500, 7200), 0.0, 0.5, 0.0, (0.6, 1.0, 0.8)),
        # No closure before the plosives' burst: silence then a burst, so like the last letter of an utterance
        # then its trailing silence, made the tiny model add a plosive (mostly "k") after the last letter.
        (_PLOSIVES, (400, 1500), (1500, 3500), (3500, 6500), 0.0, 0.8, 0.0, (1.0, 0.8, 0.6)),
    ]
    chosen: list[np.ndarray] = []
    table: dict[str, Letter] = {}
    for letters, r1, r2, r3, voiced, level, closure, gains in classes:
        logc = np.stack([rng.uniform(np.log(lo), np.log(hi), 4000) for lo, hi in (r1, r2, r3)], axis=1)
        for letter in letters:
            if chosen:
                dist = np.min(np.linalg.norm(logc[:, None, :] - np.array(chosen)[None], axis=2), axis=1)
                pick = logc[int(np.argmax(dist))]
            else:
                pick = logc[0]
            chosen.append(pick)
            formants = tuple(float(round(v)) for v in np.exp(pick))
            table[letter] = Letter(formants, gains, voiced, level, closure)  # type: ignore[arg-type]
    # Voiced fricative-like consonants: some noise in the voicing (z, v, j sound buzzy).
    for letter in "zvj":
        table[letter] = Letter(table[letter].formants, table[letter].gains, 0.6, table[letter].level, 0.0)
    return table


LETTERS = _letter_table()
_ORDER = sorted(LETTERS)
_F = np.array([LETTERS[c].formants for c in _ORDER], dtype=np.float64)
_G = np.array([LETTERS[c].gains for c in _ORDER], dtype=np.float64)
_VOICED = np.array([LETTERS[c].voiced for c in _ORDER], dtype=np.float64)
_LEVEL = np.array([LETTERS[c].level for c in _ORDER], dtype=np.float64)
_CLOSURE = np.array([LETTERS[c].closure for c in _ORDER], dtype=np.float64)
_INDEX = {c: i for i, c in enumerate(_ORDER)}


@dataclass(frozen=True)
class Speaker:
    f0: float  # Hz
    formant_scale: float
    letter_seconds: float
    gap_seconds: float
    tilt: float  # relative gain of the upper formants


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def speakers(seed: int, split: str) -> list[Speaker]:
    """The split's speakers; train and eval draw from the same ranges through separate streams (held-out voices)."""
    n = TRAIN_SPEAKERS if split == "train" else EVAL_SPEAKERS
    rng = _rng(seed, _SPLIT_CODES[split], 0)
    return [
        Speaker(
            f0=float(np.exp(rng.uniform(np.log(85), np.log(250)))),
            formant_scale=float(rng.uniform(0.95, 1.05)),
            letter_seconds=float(rng.uniform(0.055, 0.085)),
            # Pauses between words longer than the leading/trailing silence (synthesize): a pause as long as those
            # is only told apart from them by context, and lost spaces were the tiny model's main error (WER 0.8 at
            # CER 0.11 after 500 steps with 50-250 ms of silence at both ends).
            gap_seconds=float(rng.uniform(0.09, 0.15)),
            tilt=float(rng.uniform(0.6, 1.2)),
        )
        for _ in range(n)
    ]


def _lowpass_noise(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """White noise smoothed by a moving average of ``width`` samples (bandwidth ~ SAMPLE_RATE / width)."""
    white = rng.standard_normal(n + width)
    c = np.cumsum(white)
    out = (c[width:] - c[:-width]) / np.sqrt(width)
    return out[:n]


def synthesize(text: str, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
    """float32 16 kHz waveform of ``text`` (lower-case words of a-z separated by single spaces)."""
    sr = SAMPLE_RATE
    speed = rng.uniform(0.9, 1.1)
    letters: list[int] = []
    seg_len: list[int] = []
    for w, word in enumerate(text.split(" ")):
        if w:
            letters.append(-1)
            seg_len.append(int(sr * speaker.gap_seconds * speed * rng.uniform(0.8, 1.25)))
        for ch in word:
            letters.append(_INDEX[ch])
            seg_len.append(int(sr * speaker.letter_seconds * speed * rng.uniform(0.85, 1.15)))
    lead, trail = (int(sr * rng.uniform(0.02, 0.06)) for _ in range(2))
    lens = np.array([lead, *seg_len, trail], dtype=np.int64)
    ids = np.array([-1, *letters, -1], dtype=np.int64)
    n = int(lens.sum())

    seg = np.repeat(np.arange(len(lens)), lens)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = (np.arange(n) - starts[seg]) / np.maximum(lens[seg], 1)  # 0..1 within the segment
    letter = ids[seg]
    speech = letter >= 0
    li = np.where(speech, letter, 0)

    closure = _CLOSURE[li]
    # Raised-cosine envelope over the sounding part of each letter; plosives are silent for their closure first.
    active = np.clip((pos - closure) / np.maximum(1.0 - closure, 1e-6), 0.0, 1.0)
    env = np.where(speech & (pos >= closure), np.sin(np.pi * active) ** 0.6, 0.0) * _LEVEL[li]

    t = np.arange(n) / sr
    # Pitch drifts slowly (intonation) so harmonics are not perfectly stationary.
    f0 = speaker.f0 * (1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi)))
    f0 *= 1.0 - 0.08 * t / max(t[-1], 1e-6)
    glottal = ((1.0 + np.cos(2 * np.pi * np.cumsum(f0) / sr)) * 0.5) ** 4
    glottal /= np.sqrt(np.mean(glottal**2))
    noise = _lowpass_noise(rng, n, 24)
    source = _VOICED[li] * glottal + (1.0 - _VOICED[li]) * noise

    scale = speaker.formant_scale
    tilt = np.array([1.0, speaker.tilt, speaker.tilt**2])
    carriers = np.zeros(n)
    for j in range(3):
        freq = np.minimum(_F[li, j] * scale, 0.45 * sr)
        carriers += _G[li, j] * tilt[j] * np.sin(2 * np.pi * freq * t + j)
    wave = env * source * carriers

    rms = np.sqrt(np.mean(wave[speech] ** 2)) if speech.any() else 1.0
    snr_db = rng.uniform(20.0, 35.0)
    wave += rng.standard_normal(n) * rms * 10 ** (-snr_db / 20)
    wave *= rng.uniform(0.3, 0.8) / max(np.abs(wave).max(), 1e-9)
    # Fade the background noise in and out over 20 ms: otherwise an utterance starts and stops with a step in the
    # noise floor against a batch's zero padding, a sound no letter or pause of the corpus has.
    fade = min(int(0.02 * sr), n // 4)
    ramp = np.sin(0.5 * np.pi * np.arange(fade) / fade) ** 2
    wave[:fade] *= ramp
    wave[n - fade :] *= ramp[::-1]
    return wave.astype(np.float32)


def utterance(seed: int, split: str, index: int, voices: Sequence[Speaker]) -> dict[str, Any]:
    """Row ``index`` of ``split``: a shard row (id, audio FLAC bytes, text, duration, source)."""
    rng = _rng(seed, _SPLIT_CODES[split], 1, index)
    n_words = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    text = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))
    spk = int(rng.integers(len(voices)))
    wave = synthesize(text, voices[spk], rng)
    return {
        "id": f"demo{seed}-{split}-{index:06d}",
        "audio": encode_flac(wave),
        "text": text,
        "duration": wave.shape[0] / SAMPLE_RATE,
        "source": f"demo:seed={seed}:split={split}:speaker={split}{spk:02d}",
    }


def write_split(split_dir: Path, seed: int, split: str, count: int) -> None:
    voices = speakers(seed, split)
    num_shards = max(1, min(MAX_SHARDS, -(-count // UTTERANCES_PER_SHARD)))
    bounds = np.linspace(0, count, num_shards + 1).astype(int)
    for s in range(num_shards):
        rows = [utterance(seed, split, i, voices) for i in range(bounds[s], bounds[s + 1])]
        shards.write_shard(split_dir / shards.shard_name(s, num_shards), rows)
    shards.write_manifest(split_dir, extra={"demo": {"seed": seed, "split": split, "version": GENERATOR_VERSION}})


def corpus_name(seed: int, n_train: int, n_eval: int) -> str:
    key = json.dumps({"version": GENERATOR_VERSION, "seed": seed, "train": n_train, "eval": n_eval}, sort_keys=True)
    return f"demo-v{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xlsr_dist"


def _complete(corpus: Path) -> bool:
    return (corpus / "train" / shards.MANIFEST).is_file() and (corpus / "eval" / shards.MANIFEST).is_file()


def ensure_demo_corpus(root: Path, seed: int = 42, n_train: int = 2000, n_eval: int = 200) -> tuple[Path, Path]:
    """(train_dir, eval_dir) of the demo corpus under ``root``, generating it once.

    Safe to call from several processes at once (ranks, nodes on a shared filesystem): the corpus is built in a
    private temporary directory and renamed into place, so a reader sees all of it or none; a lock file spares
    processes on one machine from generating it twice.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"demo corpus needs at least 1 train and 1 eval utterance (got {n_train}, {n_eval})")
    root = Path(root).expanduser()
    final = root / corpus_name(seed, n_train, n_eval)
    if not _complete(final):
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{final.name}.lock", "a+") as lock:
            # Waiting here is bounded by one generation (~seconds); the lock dies with its holder.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _complete(final):
                    _generate_into(final, seed, n_train, n_eval)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return final / "train", final / "eval"


def _generate_into(final: Path, seed: int, n_train: int, n_eval: int) -> None:
    # Another machine sharing the filesystem (no shared lock) may finish first: its copy is identical and kept.
    with replacing_dir(final) as tmp:
        write_split(tmp / "train", seed, "train", n_train)
        write_split(tmp / "eval", seed, "eval", n_eval)
    if not _complete(final):
        raise OSError(
            f"cannot place the demo corpus at {final}: it holds an incomplete corpus; delete that directory and "
            "run again"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlsr_dist.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(default_cache_dir()), help="root directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_eval", type=int, default=200)
    args = parser.parse_args(argv)
    train_dir, eval_dir = ensure_demo_corpus(Path(args.out), args.seed, args.n_train, args.n_eval)
    print(f"train: {train_dir}\neval: {eval_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
