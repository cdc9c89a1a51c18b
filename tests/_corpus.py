"""Real audio corpora for tests: good utterances mixed with every kind of bad input prepare must survive."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def sine(seconds: float, sr: int, freq: float = 220.0, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """A sine tone, [frames] or [frames, channels] (channel c at freq * (c + 1), so averaging is visible)."""
    t = np.arange(int(round(seconds * sr))) / sr
    if channels == 1:
        return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1).astype(np.float32)


def audio_bytes(wave: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@dataclass(frozen=True)
class Good:
    """A good item: what is written (wave at sr in fmt) and what prepare must make of it."""

    name: str
    wave: np.ndarray
    sr: int
    fmt: str
    text: str
    norm: str
    expected: np.ndarray  # float32 mono 16 kHz
    tolerance: float  # max abs error allowed (lossy codecs, resampling, 16-bit storage)

    @property
    def id(self) -> str:
        return f"audio/{self.name}"


def good_items() -> list[Good]:
    return [
        Good("good_16k.wav", sine(1.0, 16000), 16000, "WAV", "Hello world.", "hello world", sine(1.0, SR), 2e-4),
        Good("good_8k.wav", sine(1.2, 8000), 8000, "WAV", "the cat sat", "the cat sat", sine(1.2, SR), 5e-3),
        Good("good_11k.flac", sine(0.9, 11025), 11025, "FLAC", "on the mat", "on the mat", sine(0.9, SR), 5e-3),
        # channel 2 is an octave up, so the mono result proves the channels were averaged, not one of them picked
        Good(
            "stereo_44k.wav",
            sine(1.5, 44100, channels=2),
            44100,
            "WAV",
            "Stereo sound, 44 kHz!",
            "stereo sound forty four khz",
            sine(1.5, SR, channels=2).mean(axis=1),
            5e-3,
        ),
        Good("good_48k.ogg", sine(1.1, 48000), 48000, "OGG", "an ogg file", "an ogg file", sine(1.1, SR), 0.05),
        Good("good_22k.mp3", sine(1.3, 22050), 22050, "MP3", "an MP3 file", "an mp three file", sine(1.3, SR), 0.05),
        Good(
            "accents.wav",
            sine(1.0, 16000),
            16000,
            "WAV",
            "Café  naïve — Zoë’s",
            "cafe naive zoe's",
            sine(1.0, SR),
            2e-4,
        ),
        # The header says 8 kHz for samples meant as 16 kHz; only the header can be trusted: 2 s of a 220 Hz tone.
        Good(
            "lying_rate.wav",
            sine(1.0, 16000, freq=440.0),
            8000,
            "WAV",
            "lying header",
            "lying header",
            sine(2.0, SR, freq=220.0),
            5e-3,
        ),
    ]


def make_bad_corpus(tmp_dir: str | Path) -> tuple[Path, list[str], dict[str, str]]:
    """A folder-layout corpus (``transcripts.tsv`` + ``audio/``) mixing good items with every kind of bad one.

    Returns (tsv path, sorted ids of the good items, {bad id: substring of its skip reason}). Ids are the paths
    as written in the TSV (``audio/<file>``); prepare with ``--layout folder --input <tsv>``.
    """
    root = Path(tmp_dir)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[str, str]] = []
    goods = good_items()
    for g in goods:
        sf.write(audio / g.name, g.wave, g.sr, format=g.fmt)
        lines.append((g.id, g.text))

    bad: dict[str, str] = {}

    def add(name: str, text: str, reason: str, data: bytes | None) -> None:
        if data is not None:
            (audio / name).write_bytes(data)
        lines.append((f"audio/{name}", text))
        bad[f"audio/{name}"] = reason

    wav = audio_bytes(sine(1.0, SR), SR)
    flac = audio_bytes(sine(1.0, SR), SR, fmt="FLAC")
    nan = sine(1.0, SR)
    nan[100:110] = np.nan
    add("truncated.wav", "cut short", "truncated audio", wav[: len(wav) // 2])  # header promises 1 s
    add("truncated.flac", "cut flac", "truncated audio", flac[: len(flac) // 2])
    add("garbage.wav", "not audio", "unreadable audio", b"this is not a wav file at all " * 20)
    add("zero_bytes.wav", "nothing here", "zero-length audio", b"")
    add("zero_frames.wav", "no frames", "zero-length audio", audio_bytes(np.zeros(0, np.float32), SR))
    add("nan.wav", "not a number", "non-finite audio", audio_bytes(nan, SR, subtype="FLOAT"))
    add("too_long.wav", "a very long recording", "audio too long", audio_bytes(sine(31.0, 8000, amp=0.1), 8000))
    add("missing.wav", "the file is gone", "missing audio file", None)
    add("empty_text.wav", "   ", "empty transcript", wav)
    add("punct_only.wav", "?! … —", "empty transcript", wav)
    add("dense_text.wav", "x" * 60, "transcript too long for audio", audio_bytes(sine(0.5, SR), SR))

    tsv = root / "transcripts.tsv"
    tsv.write_text("path\tsentence\n" + "".join(f"{p}\t{t}\n" for p, t in lines), encoding="utf-8")
    return tsv, sorted(g.id for g in goods), bad


def write_jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")


def make_many_corpus(tmp_dir: str | Path, count: int, seconds: float = 0.1, distinct: int = 8) -> Path:
    """A folder-layout corpus of ``count`` utterances for scale tests; returns its transcript TSV.

    ``distinct`` noisy clips of ``seconds`` (noise, so FLAC cannot shrink them to nothing) are written once and
    every utterance is a symbolic link to one of them: the corpus costs the disk a few files whatever its size.
    """
    root = Path(tmp_dir)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(distinct):
        wave = sine(seconds, SR, freq=110.0 * (k + 1)) + rng.normal(0.0, 0.05, int(round(seconds * SR)))
        sf.write(root / f"clip{k}.wav", wave.astype(np.float32), SR)
    lines = ["path\ttext"]
    for i in range(count):
        name = f"clips/u{i:08d}.wav"
        (root / name).symlink_to(root / f"clip{i % distinct}.wav")
        lines.append(f"{name}\t{chr(97 + i % 26) * 2}")  # two letters: dense enough for 0.1 s
    tsv = root / "transcripts.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return tsv
