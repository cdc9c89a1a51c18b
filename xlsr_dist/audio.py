"""Audio decoding to the one form the model takes: float32 mono 16 kHz.

Anything libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...) is accepted; channels are averaged to mono and
any sample rate is resampled to 16 kHz with soxr. The header's sample rate is trusted (there is nothing else to
trust); a header that promises more frames than the file holds means a truncated file, which is refused rather
than silently shortened, because its transcript would then describe audio that is not there.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

# Short reason categories, used by prepare to count skipped items.
UNREADABLE = "unreadable audio"
TRUNCATED = "truncated audio"
EMPTY = "zero-length audio"
NON_FINITE = "non-finite audio"
TOO_LONG = "audio too long"
MISSING = "missing audio file"

# libsndfile logs a chunk whose declared size exceeds what the file holds as "data : 64000 (should be 31978)".
_CHUNK_LIE = re.compile(r"^\s*(data|SSND|ds64)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers that cannot seek back leave these placeholder sizes; they are not lies.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
# MP3 frame counts come from a Xing/LAME header or an estimate; a decoder may legitimately end up to a couple of
# MPEG frames (1152 samples each) short of it.
_MP3_SLACK_FRAMES = 2 * 1152
# libsndfile subtypes whose samples are integers (FLAC and ALAC report PCM_*/ALAC_*).
_INTEGER_SUBTYPE_PREFIXES = ("PCM_", "ALAC_", "ULAW", "ALAW", "DPCM_", "DWVW_")


class AudioError(Exception):
    """Audio that cannot become a training example; ``reason`` is a short category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_mono_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    """[frames] or [frames, channels] at ``sr`` Hz -> float32 [frames'] at 16 kHz (channels averaged)."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise AudioError(UNREADABLE, f"expected [frames] or [frames, channels], got shape {x.shape}")
    if sr <= 0:
        raise AudioError(UNREADABLE, f"sample rate {sr}")
    if sr != SAMPLE_RATE and x.size:
        x = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def _open(source: str | BinaryIO, name: str, max_seconds: float | None) -> sf.SoundFile:
    """The file opened, its header checked (frames, rate, a data chunk larger than the file, max_seconds)."""
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(UNREADABLE, f"{name}: {_first_line(e)}") from e
    try:
        if f.frames <= 0 or f.samplerate <= 0:
            raise AudioError(EMPTY, f"{name}: {f.frames} frames")
        for _, claimed, actual in _CHUNK_LIE.findall(f.extra_info or ""):
            if int(claimed) not in _PLACEHOLDER_SIZES and int(claimed) > int(actual) + 16:
                raise AudioError(TRUNCATED, f"{name}: header promises {claimed} bytes of audio, file holds {actual}")
        seconds = f.frames / f.samplerate
        if max_seconds is not None and seconds > max_seconds:
            raise AudioError(TOO_LONG, f"{name}: {seconds:.1f} s > {max_seconds:g} s")
    except AudioError:
        f.close()
        raise
    return f


def _check_samples(data: np.ndarray, subtype: str, name: str) -> None:
    # Integer-coded samples scaled to float cannot be NaN/inf: the check is a full pass for nothing there.
    if not subtype.startswith(_INTEGER_SUBTYPE_PREFIXES) and not np.isfinite(data).all():
        raise AudioError(NON_FINITE, f"{name}: {int((~np.isfinite(data)).sum())} NaN/inf samples")


def _check_length(decoded: int, frames: int, fmt: str, name: str) -> None:
    slack = _MP3_SLACK_FRAMES if fmt == "MP3" else 0
    if decoded < frames - slack:
        raise AudioError(TRUNCATED, f"{name}: header promises {frames} frames, decoded {decoded}")
    if decoded == 0:
        raise AudioError(EMPTY, f"{name}: 0 frames decoded")


def _decode(source: str | BinaryIO, name: str, max_seconds: float | None) -> np.ndarray:
    # One open for header checks and decoding: opening twice (sf.info, then sf.read) parsed every header and
    # FLAC stream info twice, a fifth of the decode cost of a short clip.
    with _open(source, name, max_seconds) as f:
        try:
            # Mono comes back 1-D, so no [frames, 1] -> [frames] averaging pass.
            data = f.read(dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            # Opened fine, then failed mid-stream (e.g. "flac decoder lost sync"): the file ends early or is damaged.
            raise AudioError(TRUNCATED, f"{name}: {_first_line(e)}") from e
        frames, samplerate, fmt, subtype = f.frames, f.samplerate, f.format, f.subtype
    _check_length(data.shape[0], frames, fmt, name)
    _check_samples(data, subtype, name)
    return to_mono_16k(data, samplerate)


def _existing(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise AudioError(MISSING, str(path))
    if p.stat().st_size == 0:
        raise AudioError(EMPTY, f"{path}: 0 bytes")
    return str(p)


def audio_seconds(path: str | Path) -> float:
    """An audio file's duration from its header alone; raises AudioError as load_audio would on the header."""
    with _open(_existing(path), str(path), None) as f:
        return f.frames / f.samplerate


def stream_audio(path: str | Path, block_seconds: float = 4.0) -> Iterator[np.ndarray]:
    """An audio file as float32 mono 16 kHz blocks of about ``block_seconds``, with load_audio's checks, holding one
    block in memory, not the file. Resampling is soxr's streaming resampler, so block edges leave no seams; its
    output may differ from load_audio's one-shot resampling by float rounding. A file found truncated or non-finite
    raises AudioError after the blocks before it."""
    name = str(path)
    with _open(_existing(path), name, None) as f:
        sr, fmt, subtype, frames = f.samplerate, f.format, f.subtype, f.frames
        # soundfile asks a seekable file for its position (a seek to the current one) before every read; libsndfile's
        # MP3 decoder does not land exactly there, so every block after the first decoded wrong (errors of 0.3 on a
        # 0.3 sine). Reading on as from a pipe needs no position.
        f.seekable = lambda: False  # type: ignore[method-assign]
        resampler = None if sr == SAMPLE_RATE else soxr.ResampleStream(sr, SAMPLE_RATE, 1, dtype="float32")
        decoded = 0
        block = max(1, int(block_seconds * sr))
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise AudioError(TRUNCATED, f"{name}: {_first_line(e)}") from e
            last = data.shape[0] < block
            decoded += data.shape[0]
            _check_samples(data, subtype, name)
            if last:
                _check_length(decoded, frames, fmt, name)
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            out = mono if resampler is None else resampler.resample_chunk(mono, last=last)
            if out.size:
                yield np.ascontiguousarray(out, dtype=np.float32)
            if last:
                return


def _first_line(e: BaseException) -> str:
    # LibsndfileError's str() embeds the repr of the file object; its error_string is the useful part.
    text = (getattr(e, "error_string", None) or str(e)).strip().splitlines()
    return text[0] if text else type(e).__name__


def decode_bytes(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Encoded audio bytes (any libsndfile format) -> float32 mono 16 kHz."""
    if not data:
        raise AudioError(EMPTY, "0 bytes")
    return _decode(io.BytesIO(data), "<bytes>", max_seconds)


def load_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """An audio file -> float32 mono 16 kHz; raises AudioError naming the file and the reason."""
    return _decode(_existing(path), str(path), max_seconds)


def encode_flac(wave: np.ndarray) -> bytes:
    """float32 mono 16 kHz -> FLAC bytes (PCM_16)."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(EMPTY if x.size == 0 else UNREADABLE, f"cannot encode shape {x.shape}")
    # Resampling can overshoot full scale slightly; unclipped, the int16 conversion would wrap around.
    x = np.clip(x, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
