"""Real audio corpora for tests: good utterances mixed with every kind of bad input prepare must survive."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def sine(seconds: float, sr: int, freq: float = 220.0, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """A sine tone, [frames] or [frames, channels] (channel c at freq * (c + 1) so averaging is visible)."""
    t = np.arange(int(round(seconds * sr))) / sr
    if channels == 1:
        return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1).astype(np.float32)


def expected_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    """What a mono 16 kHz version of ``wave`` (sampled at ``sr``) should look like, analytically for our sines."""
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def wav_bytes(wave: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


# Good items: id -> (file name, seconds, sample rate, channels, format, transcript, expected normalised transcript)
GOOD = {
    "good_16k.wav": ("good_16k.wav", 1.0, 16000, 1, "WAV", "Hello world.", "hello world"),
    "good_8k.wav": ("good_8k.wav", 1.2, 8000, 1, "WAV", "the cat sat", "the cat sat"),
    "good_11k.flac": ("good_11k.flac", 0.9, 11025, 1, "FLAC", "on the mat", "on the mat"),
    "stereo_44k.wav": ("stereo_44k.wav", 1.5, 44100, 2, "WAV", "Stereo sound, 44.1 kHz!", None),
    "good_48k.ogg": ("good_48k.ogg", 1.1, 48000, 1, "OGG", "an ogg file", "an ogg file"),
    "good_22k.mp3": ("good_22k.mp3", 1.3, 22050, 1, "MP3", "an mp3 file", "an mp3 file"),
    "accents.wav": ("accents.wav", 1.0, 16000, 1, "WAV", "Café  naïve — Zoë’s", "cafe naive zoe's"),
    # The header says 8 kHz; the samples were meant as 16 kHz. Only the header can be trusted: 2 s at 8 kHz.
    "lying_rate.wav": ("lying_rate.wav", 2.0, 8000, 1, "WAV", "lying header", "lying header"),
}


def make_bad_corpus(tmp_dir: str | Path) -> tuple[Path, list[str], dict[str, str]]:
    """A folder-layout corpus (transcripts.tsv + audio) mixing good and bad items.

    Returns (tsv path, ids of good items, {bad id: substring of its skip reason}). Ids are the paths in the TSV.
    """
    root = Path(tmp_dir)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for uid, (name, seconds, sr, ch, fmt, text, _) in GOOD.items():
        sf.write(audio / name, sine(seconds, sr, channels=ch), sr, format=fmt)
        lines.append((f"audio/{name}", text))

    bad: dict[str, str] = {}

    def add(name: str, text: str, reason: str, data: bytes | None) -> None:
        if data is not None:
            (audio / name).write_bytes(data)
        lines.append((f"audio/{name}", text))
        bad[f"audio/{name}"] = reason

    full = wav_bytes(sine(1.0, SR), SR)
    add("truncated.wav", "cut short", "truncated audio", full[: len(full) // 2])
    add("garbage.wav", "not audio", "unreadable audio", b"this is not a wav file at all" * 20)
    add("zero_bytes.wav", "nothing here", "zero-length audio", b"")
    add("zero_frames.wav", "no frames", "zero-length audio", wav_bytes(np.zeros(0, np.float32), SR))
    nan = sine(1.0, SR)
    nan[100:110] = np.nan
    add("nan.wav", "not a number", "non-finite audio", wav_bytes(nan, SR, subtype="FLOAT"))
    add("too_long.wav", "a very long recording", "audio too long", wav_bytes(sine(31.0, 8000, amp=0.1), 8000))
    add("missing.wav", "the file is gone", "missing audio file", None)
    add("empty_text.wav", "   ", "empty transcript", wav_bytes(sine(1.0, SR), SR))
    add("punct_only.wav", "?! … —", "empty transcript", wav_bytes(sine(1.0, SR), SR))
    add("dense_text.wav", "x" * 60, "transcript too long for audio", wav_bytes(sine(0.5, SR), SR))
    flac = wav_bytes(sine(1.0, SR), SR, fmt="FLAC")
    add("truncated.flac", "cut flac", "truncated audio", flac[: len(flac) // 2])

    tsv = root / "transcripts.tsv"
    tsv.write_text("path\tsentence\n" + "".join(f"{p}\t{t}\n" for p, t in lines), encoding="utf-8")
    return tsv, sorted(GOOD), bad


def good_expectations(uid: str) -> tuple[np.ndarray, str | None]:
    """(expected 16 kHz mono wave before resampling error, expected normalised text or None for 'any') of a good id."""
    name, seconds, sr, ch, fmt, text, norm = GOOD[uid]
    return sine(seconds, SR, channels=ch).mean(axis=1) if ch > 1 else sine(seconds, SR), norm


def write_nemo_manifest(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
