"""audio.py: every format and rate becomes float32 mono 16 kHz; bad audio is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests._corpus import SR, audio_bytes, good_items, sine
from xlsr_dist import audio


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - len(want)) <= 1, (len(got), len(want))
    n = min(len(got), len(want))
    assert float(np.abs(got[:n] - want[:n]).max()) <= tol


@pytest.mark.parametrize("good", good_items(), ids=lambda g: g.name)
def test_every_format_rate_and_channel_count_becomes_mono_16k(tmp_path, good):
    path = tmp_path / good.name
    sf.write(path, good.wave, good.sr, format=good.fmt)
    _close(audio.load_audio(path), good.expected, good.tolerance)
    _close(audio.decode_bytes(path.read_bytes()), good.expected, good.tolerance)


def test_stereo_44k_is_averaged_and_resampled():
    wave = sine(1.5, 44100, channels=2)
    got = audio.to_mono_16k(wave, 44100)
    assert got.shape == (24000,)
    # the mean of both channels, not the first one
    assert np.abs(got[200:-200] - sine(1.5, SR, channels=2).mean(axis=1)[200:-200]).max() < 1e-3
    assert np.abs(got[200:-200] - sine(1.5, SR)[200:-200]).max() > 0.05


def test_flac_round_trip_is_16_bit_exact_and_clips_instead_of_wrapping():
    wave = sine(0.5, SR)
    data = audio.encode_flac(wave)
    info = sf.info(__import__("io").BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", SR, 1)
    assert np.abs(audio.decode_bytes(data) - wave).max() <= 1 / 32768 + 1e-7
    loud = np.full(1000, 1.5, np.float32)  # resampling can overshoot full scale
    assert audio.decode_bytes(audio.encode_flac(loud)).min() > 0.99


def _reason(fn, *args) -> str:
    with pytest.raises(audio.AudioError) as e:
        fn(*args)
    return e.value.reason


def test_bad_audio_is_refused_with_its_reason(tmp_path):
    wav = audio_bytes(sine(1.0, SR), SR)
    flac = audio_bytes(sine(1.0, SR), SR, fmt="FLAC")
    nan = sine(1.0, SR)
    nan[5] = np.inf
    cases = {
        "truncated.wav": (wav[: len(wav) // 2], audio.TRUNCATED),
        "truncated.flac": (flac[: len(flac) // 2], audio.TRUNCATED),
        "garbage.wav": (b"RIFF but not really" * 10, audio.UNREADABLE),
        "empty.wav": (b"", audio.EMPTY),
        "no_frames.wav": (audio_bytes(np.zeros(0, np.float32), SR), audio.EMPTY),
        "inf.wav": (audio_bytes(nan, SR, subtype="FLOAT"), audio.NON_FINITE),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _reason(audio.load_audio, tmp_path / name) == reason, name
        assert _reason(audio.decode_bytes, data) == reason, name
    assert _reason(audio.load_audio, tmp_path / "absent.wav") == audio.MISSING


def test_too_long_is_refused_from_the_header_before_decoding(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, sine(5.0, 8000), 8000)
    assert _reason(audio.load_audio, path, 4.0) == audio.TOO_LONG
    assert len(audio.load_audio(path, 6.0)) == 5 * SR


def test_error_names_the_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"nonsense" * 50)
    with pytest.raises(audio.AudioError, match="broken.wav"):
        audio.load_audio(path)
