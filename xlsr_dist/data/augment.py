"""Waveform augmentation of training items: speed perturbation, room impulse responses, additive noise and gain.

Applied where a training item's audio is decoded (``stream.UtteranceDataset``, in the DataLoader worker), before
collate; the eval stream never augments. Every draw comes from ``specaugment.utterance_generator`` seeded by
(seed, epoch, utterance id) with a stream constant of its own per augmentation, so an utterance is perturbed the
same way whichever rank, micro-batch, world size or resume it lands in, and turning one augmentation on does not
change what another draws.

The order is Kaldi's and ESPnet's: speed (soxr resampling: the signal read at ``16 kHz x factor`` and resampled to
16 kHz, so length and pitch both change), then reverberation, then noise at an SNR drawn from a range, then gain
(clipped to [-1, 1]). Collate normalises each utterance to zero mean and unit variance, so a gain changes the
model's input only where it clips.

A speed factor that leaves an utterance fewer model frames than its transcript needs for CTC is not applied: that
utterance keeps factor 1.0 in that epoch. The decision depends on the utterance and its draw alone, so it is the same
on every rank; no item is dropped, so every rank's micro-batch keeps its size.

Noise and RIR recordings are read from plain folders, or from shards of one (``prepare --layout audio``, also on
S3), once per process, before the DataLoader forks, so the workers share those pages; noise is held in memory as
float32 16 kHz mono (an hour is about 230 MB).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from xlsr_dist.audio import SAMPLE_RATE, AudioError, decode_bytes, load_audio
from xlsr_dist.config import DataConfig
from xlsr_dist.data import shards
from xlsr_dist.data.problems import DataProblem
from xlsr_dist.data.specaugment import utterance_generator
from xlsr_dist.text import ctc_min_frames

log = logging.getLogger(__name__)

# One stream constant per augmentation: each draws from its own generator (see specaugment.utterance_generator).
_SPEED_STREAM = 0x53504544  # "SPED"
_RIR_STREAM = 0x52495220  # "RIR "
_NOISE_STREAM = 0x4E4F4953  # "NOIS"
_GAIN_STREAM = 0x4741494E  # "GAIN"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
# Below this power a waveform is treated as silent: noise cannot be scaled to an SNR against it.
_SILENT_POWER = 1e-10


def parse_factors(text: str) -> list[float]:
    """'0.9,1.0,1.1' -> [0.9, 1.0, 1.1]; ValueError naming the bad entry."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
    return out


def audio_files(folder: str) -> list[Path]:
    """The audio files under ``folder`` (recursively), sorted by path so every process lists them alike."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def holds_shards(location: str) -> bool:
    """Whether ``location`` is a split of shards (``prepare --layout audio`` output, local or a URL) rather than a
    plain folder of audio files."""
    return "://" in location or any(Path(location).glob("shard-*-of-*.parquet"))


def _sources(location: str) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """(name, decode) for every recording at ``location``: the rows of its shards, or its audio files."""
    if not holds_shards(location):
        for path in audio_files(location):
            yield path.name, functools.partial(load_audio, path)
        return
    for shard in shards.list_shards(location):
        rows = shards.read_rows(shard, range(shards.read_metadata([shard]).num_rows))
        for row in rows:
            yield str(row["id"]), functools.partial(decode_bytes, row["audio"])


def load_folder(folder: str, flag: str, min_samples: int) -> list[np.ndarray]:
    """Every decodable recording of ``folder`` (a folder of audio files, or shards of one prepared with
    ``prepare --layout audio``) with at least ``min_samples`` samples; DataProblem (exit 2) naming ``flag`` when
    none is."""
    waves, rejected, seen = [], [], 0
    try:
        for name, decode in _sources(folder):
            seen += 1
            try:
                wave = decode()
            except AudioError as e:
                rejected.append(f"{name}: {e}")
                continue
            if len(wave) < min_samples or float(np.dot(wave, wave)) / len(wave) < _SILENT_POWER:
                rejected.append(f"{name}: shorter than {min_samples} samples or silent")
                continue
            waves.append(wave)
    except shards.ShardError as e:
        rejected.append(str(e))
    if not waves:
        found = f"{seen} recording(s), none usable ({'; '.join(rejected[:3])})" if seen or rejected else "no audio file"
        raise DataProblem(
            flag,
            f"{flag} {folder}: {found}. What would work: a folder holding audio files ({', '.join(AUDIO_SUFFIXES)}) "
            f"that decode and are not silent, or its shards from `python -m xlsr_dist.prepare --layout audio`",
        )
    for line in rejected:
        log.warning("%s: skipping %s", flag, line)
    return waves


@dataclass(frozen=True)
class Augmentation:
    """The run's augmentation settings (DataConfig's fields) and the noise and RIR waveforms they name."""

    seed: int
    speed_prob: float
    speed_factors: tuple[float, ...]
    noise_prob: float
    snr_db: tuple[float, float]
    noises: tuple[np.ndarray, ...]
    rir_prob: float
    rirs: tuple[np.ndarray, ...]
    gain_prob: float
    gain_db: tuple[float, float]

    @staticmethod
    def from_config(d: DataConfig, seed: int) -> Augmentation | None:
        """The augmentation ``d`` asks for, None when every probability is 0 (the default)."""
        if not (d.speed_perturb_prob or d.noise_prob or d.rir_prob or d.gain_prob):
            return None
        noises = load_folder(d.noise_dir, "--noise_dir", 1) if d.noise_prob else []
        rirs = [_unit_rir(r) for r in load_folder(d.rir_dir, "--rir_dir", 1)] if d.rir_prob else []
        return Augmentation(
            seed=int(seed),
            speed_prob=d.speed_perturb_prob,
            speed_factors=tuple(parse_factors(d.speed_factors)),
            noise_prob=d.noise_prob,
            snr_db=(d.noise_snr_min_db, d.noise_snr_max_db),
            noises=tuple(noises),
            rir_prob=d.rir_prob,
            rirs=tuple(rirs),
            gain_prob=d.gain_prob,
            gain_db=(d.gain_min_db, d.gain_max_db),
        )

    def describe(self) -> str:
        parts = []
        if self.speed_prob:
            parts.append(f"speed x{'/'.join(f'{f:g}' for f in self.speed_factors)} (p {self.speed_prob:g})")
        if self.rir_prob:
            parts.append(f"reverb from {len(self.rirs)} RIR(s) (p {self.rir_prob:g})")
        if self.noise_prob:
            seconds = sum(len(n) for n in self.noises) / SAMPLE_RATE
            parts.append(
                f"noise from {len(self.noises)} file(s) ({seconds:.0f} s) at SNR {self.snr_db[0]:g}-{self.snr_db[1]:g}"
                f" dB (p {self.noise_prob:g})"
            )
        if self.gain_prob:
            parts.append(f"gain {self.gain_db[0]:g}..{self.gain_db[1]:g} dB (p {self.gain_prob:g})")
        return "augmentation: " + ", ".join(parts)

    def speed_factor(self, epoch: int, utterance_id: str) -> float:
        """The factor drawn for this utterance in this epoch (1.0 when speed perturbation is off or not drawn)."""
        if not self.speed_prob:
            return 1.0
        rng = utterance_generator(self.seed, epoch, utterance_id, _SPEED_STREAM)
        applied = rng.random() < self.speed_prob
        factor = self.speed_factors[int(rng.integers(len(self.speed_factors)))]
        return factor if applied else 1.0

    def apply(
        self, epoch: int, utterance_id: str, wave: np.ndarray, labels: Sequence[int], frames: Callable[[int], int]
    ) -> np.ndarray:
        """``wave`` (float32 16 kHz) perturbed as drawn for (seed, epoch, utterance_id); ``frames`` maps samples
        to the model's output frames, for the CTC check of a speed change."""
        out = np.asarray(wave, dtype=np.float32)
        factor = self.speed_factor(epoch, utterance_id)
        if factor != 1.0:
            faster = soxr.resample(out, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32, copy=False)
            if len(faster) and frames(len(faster)) >= ctc_min_frames(labels):
                out = faster
        if self.rir_prob:
            rng = utterance_generator(self.seed, epoch, utterance_id, _RIR_STREAM)
            if rng.random() < self.rir_prob:
                out = reverberate(out, self.rirs[int(rng.integers(len(self.rirs)))])
        if self.noise_prob:
            rng = utterance_generator(self.seed, epoch, utterance_id, _NOISE_STREAM)
            if rng.random() < self.noise_prob:
                out = add_noise(out, self.noises[int(rng.integers(len(self.noises)))], rng, self.snr_db)
        if self.gain_prob:
            rng = utterance_generator(self.seed, epoch, utterance_id, _GAIN_STREAM)
            if rng.random() < self.gain_prob:
                db = rng.uniform(*self.gain_db)
                out = np.clip(out * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32, copy=False)
        return out


def _unit_rir(rir: np.ndarray) -> np.ndarray:
    """An impulse response cut to start at its direct path (its peak) and scaled to unit energy, so convolving
    neither delays nor changes the level of the speech much."""
    start = int(np.argmax(np.abs(rir)))
    tail = rir[start:].astype(np.float64)
    return (tail / np.sqrt(np.dot(tail, tail))).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wave`` convolved with ``rir`` (FFT), cut to ``wave``'s length."""
    n = len(wave) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(rir, size), size)[: len(wave)]
    return wet.astype(np.float32)


def add_noise(wave: np.ndarray, noise: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """``wave`` plus a random segment of ``noise`` (looped when shorter) scaled to an SNR drawn from ``snr_db``."""
    snr = rng.uniform(*snr_db)
    start = int(rng.integers(len(noise)))
    n = len(wave)
    if start + n <= len(noise):
        segment = noise[start : start + n]
    else:
        segment = np.take(noise, np.arange(start, start + n) % len(noise))
    speech_power = float(np.dot(wave, wave)) / max(n, 1)
    noise_power = float(np.dot(segment, segment)) / max(n, 1)
    if speech_power < _SILENT_POWER or noise_power < _SILENT_POWER:
        return wave
    scale = np.float32(np.sqrt(speech_power / (noise_power * 10.0 ** (snr / 10.0))))
    return (wave + scale * segment).astype(np.float32, copy=False)
