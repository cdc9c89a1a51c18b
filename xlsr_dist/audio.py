"""Audio decoding to the one form the model takes: float32 mono 16 kHz.

Anything libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...) is accepted; channels are averaged to mono and
any sample rate is resampled to 16 kHz with soxr. The header's sample rate is trusted (there is nothing else to
trust); a header that promises more frames than the file holds means a truncated file, which is refused rather
than silently shortened, because its transcript would then describe audio that is not there.
"""

from __future__ import annotations

import io
import re
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


def _decode(source: str | BinaryIO, name: str, max_seconds: float | None) -> np.ndarray:
    # One open for header checks and decoding: opening twice (sf.info, then sf.read) parsed every header and
    # FLAC stream info twice, a fifth of the decode cost of a short clip.
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(UNREADABLE, f"{name}: {_first_line(e)}") from e
    with f:
        frames, samplerate = f.frames, f.samplerate
        if frames <= 0 or samplerate <= 0:
            raise AudioError(EMPTY, f"{name}: {frames} frames")
        for _, claimed, actual in _CHUNK_LIE.findall(f.extra_info or ""):
            if int(claimed) not in _PLACEHOLDER_SIZES and int(claimed) > int(actual) + 16:
                raise AudioError(TRUNCATED, f"{name}: header promises {claimed} bytes of audio, file holds {actual}")
        seconds = frames / samplerate
        if max_seconds is not None and seconds > max_seconds:
            raise AudioError(TOO_LONG, f"{name}: {seconds:.1f} s > {max_seconds:g} s")
        try:
            # Mono comes back 1-D, so no [frames, 1] -> [frames] averaging pass.
            data = f.read(dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            # Opened fine, then failed mid-stream (e.g. "flac decoder lost sync"): the file ends early or is damaged.
            raise AudioError(TRUNCATED, f"{name}: {_first_line(e)}") from e
        fmt, subtype = f.format, f.subtype
    slack = _MP3_SLACK_FRAMES if fmt == "MP3" else 0
    if data.shape[0] < frames - slack:
        raise AudioError(TRUNCATED, f"{name}: header promises {frames} frames, decoded {data.shape[0]}")
    if data.shape[0] == 0:
        raise AudioError(EMPTY, f"{name}: 0 frames decoded")
    # Integer-coded samples scaled to float cannot be NaN/inf: the check is a full pass for nothing there.
    if not subtype.startswith(_INTEGER_SUBTYPE_PREFIXES) and not np.isfinite(data).all():
        raise AudioError(NON_FINITE, f"{name}: {int((~np.isfinite(data)).sum())} NaN/inf samples")
    return to_mono_16k(data, samplerate)


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
    p = Path(path)
    if not p.is_file():
        raise AudioError(MISSING, str(path))
    if p.stat().st_size == 0:
        raise AudioError(EMPTY, f"{path}: 0 bytes")
    return _decode(str(p), str(path), max_seconds)


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
