"""decoding/ (pure parts) and transcribe's batching, on a fixed-seed tiny model: the greedy decoder's words and
their CTC frame spans, chunk windows that tile a file's frames and stitch back to its whole-file output, subtitle
cues and time formats, batched files giving the same greedy ids as one by one, models without attention-mask
support never padded, and the command's user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2Config

from tests._corpus import audio_bytes, good_items, sine
from xlsr_dist import text
from xlsr_dist.audio import SAMPLE_RATE, AudioError, audio_seconds, load_audio, stream_audio
from xlsr_dist.config import ModelConfig
from xlsr_dist.data import demo
from xlsr_dist.decoding import subtitles
from xlsr_dist.decoding.chunking import ChunkPlan, FrameGeometry, next_window, stitch, windows
from xlsr_dist.decoding.greedy import ctc_greedy_decode
from xlsr_dist.decoding.words import GreedyDecoder, TimedWord, Word, text_of
from xlsr_dist.model import build_model, build_processor, output_frames, tiny_config, xlsr53_config
from xlsr_dist.transcribe import Transcriber

REPO = Path(__file__).resolve().parent.parent
VOCAB = text.build_vocab(demo.WORDS)
INVERSE = text.inverse(VOCAB)
BLANK = VOCAB[text.PAD]


# ----------------------------------------------------------------------------------------------- greedy decoder


def test_greedy_words_carry_the_frames_of_their_first_and_last_character() -> None:
    a, b, bar = VOCAB["a"], VOCAB["b"], VOCAB["|"]
    #        0  1  2      3      4  5    6      7  8  9    10
    ids = [BLANK, a, a, BLANK, a, b, bar, BLANK, b, b, BLANK]
    words = GreedyDecoder(INVERSE, BLANK).words_from_ids(np.array(ids))
    assert words == [Word("aab", 1, 6), Word("b", 8, 10)]


def test_greedy_text_is_ctc_greedy_decode_for_any_ids() -> None:
    decoder = GreedyDecoder(INVERSE, BLANK)
    rng = np.random.default_rng(0)
    # Blanks, delimiters and [UNK] frequent, so leading/trailing/double delimiters and empty words all occur.
    weights = np.ones(len(VOCAB))
    weights[[BLANK, VOCAB["|"], VOCAB[text.UNK]]] = 12
    for _ in range(300):
        ids = rng.choice(len(VOCAB), size=int(rng.integers(0, 60)), p=weights / weights.sum())
        words = decoder.words_from_ids(ids)
        assert text_of(words) == ctc_greedy_decode(ids.tolist(), INVERSE, BLANK)
        assert all(0 <= w.start_frame < w.end_frame <= len(ids) and w.text for w in words)
        assert all(p.end_frame <= n.start_frame for p, n in zip(words, words[1:]))
    log_probs = np.log(np.full((5, len(VOCAB)), 1e-3, dtype=np.float32))
    log_probs[np.arange(5), [VOCAB["h"], VOCAB["i"], BLANK, VOCAB["|"], VOCAB["o"]]] = 0.0
    assert decoder.decode(log_probs) == [Word("hi", 0, 2), Word("o", 4, 5)]


# ----------------------------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("config", [tiny_config(), xlsr53_config()], ids=["tiny", "xlsr53"])
def test_frame_geometry_counts_the_model_s_frames(config: Wav2Vec2Config) -> None:
    g = FrameGeometry.from_config(config)
    for n in [0, 1, 63, 64, 159, 160, 367, 368, 399, 400, 401, 16000, 16001, 123457, 320000]:
        assert g.frames(n) == output_frames(config, n), n
    assert (g.hop, g.receptive_field) == ((160, 368) if config.conv_stride[0] == 16 else (320, 400))


def _toy_frames(wave: np.ndarray, g: FrameGeometry) -> np.ndarray:
    """A stand-in model whose frame j depends only on its receptive field: any window alignment error shows."""
    n = g.frames(wave.shape[0])
    idx = np.arange(n)[:, None] * g.hop + np.arange(g.receptive_field)[None, :]
    x = wave[idx] if n else np.zeros((0, g.receptive_field), dtype=np.float32)
    return np.stack([x.sum(axis=1), (x * np.linspace(-1, 1, g.receptive_field)).sum(axis=1)], axis=1)


@pytest.mark.parametrize("config", [tiny_config(), xlsr53_config()], ids=["tiny", "xlsr53"])
def test_windows_tile_the_file_s_frames_and_stitch_back_to_its_whole_output(config: Wav2Vec2Config) -> None:
    g = FrameGeometry.from_config(config)
    rng = np.random.default_rng(1)
    plan = ChunkPlan.of(g, 2 * SAMPLE_RATE, SAMPLE_RATE // 3)
    for n in [100, 30_000, plan.span, plan.span + 1, 3 * SAMPLE_RATE, 17 * SAMPLE_RATE + 77, 61 * SAMPLE_RATE + 5]:
        wave = rng.standard_normal(n).astype(np.float32)
        ws = windows(plan, n)
        whole = _toy_frames(wave, g)
        assert sum(w.keep_to - w.keep_from for w in ws) == g.frames(n)
        assert all(w.end - w.start <= plan.span and w.start % g.hop == 0 for w in ws)
        pieces = [_toy_frames(wave[w.start : w.end], g) for w in ws]
        assert all(p.shape[0] >= w.keep_to for p, w in zip(pieces, ws))
        np.testing.assert_allclose(stitch(pieces, ws), whole, rtol=0, atol=1e-3)
        if n <= plan.span:  # a file that fits is one window, the whole file: exactly as without chunking
            assert [(w.start, w.end, w.keep_from, w.keep_to) for w in ws] == [(0, n, 0, g.frames(n))]
        else:  # each kept part has its context (the file's ends excepted)
            assert len(ws) > 1
            for w in ws:
                assert w.keep_from >= plan.context_frames or w.start == 0
                assert g.frames(w.end - w.start) - w.keep_to >= plan.context_frames or w.end == n


def test_windows_planned_as_audio_arrives_are_the_windows_of_the_whole_file() -> None:
    g = FrameGeometry.from_config(tiny_config())
    plan = ChunkPlan.of(g, 3 * SAMPLE_RATE, SAMPLE_RATE // 2)
    rng = np.random.default_rng(2)
    for n in [10_000, 3 * SAMPLE_RATE + 400, 25 * SAMPLE_RATE + 3]:
        streamed, first_kept, available = [], 0, 0
        while True:
            final = available >= n
            w = next_window(plan, first_kept, min(available, n), final)
            if w is None:
                if final:
                    break
                available += int(rng.integers(1, 20_000))  # blocks of any size
                continue
            assert w.end <= min(available, n)  # never asks for audio not yet read
            streamed.append(w)
            first_kept = w.first_frame + w.keep_to
            if final and w.end >= n:
                break
        assert streamed == windows(plan, n)


def test_a_window_that_keeps_nothing_is_refused() -> None:
    g = FrameGeometry.from_config(tiny_config())
    with pytest.raises(ValueError, match="keeps no frame"):
        ChunkPlan.of(g, SAMPLE_RATE, SAMPLE_RATE // 2)


# ------------------------------------------------------------------------------------------- streamed reading


@pytest.mark.parametrize("good", good_items(), ids=lambda g: g.name)
def test_streamed_audio_is_load_audio_s_in_blocks(tmp_path: Path, good: Any) -> None:
    path = tmp_path / good.name
    sf.write(path, good.wave, good.sr, format=good.fmt)
    blocks = list(stream_audio(path, block_seconds=0.1))
    streamed, whole = np.concatenate(blocks), load_audio(path)
    assert (
        streamed.dtype == np.float32
        and streamed.ndim == 1
        and audio_seconds(path) == pytest.approx(good.wave.shape[0] / good.sr)
    )
    assert abs(streamed.shape[0] - whole.shape[0]) <= 1 and len(blocks) > 1
    n = min(streamed.shape[0], whole.shape[0])
    if good.sr == SAMPLE_RATE:
        np.testing.assert_array_equal(streamed, whole)
    else:  # soxr's streaming and one-shot resampling agree up to float rounding, seams included
        assert np.abs(streamed[:n] - whole[:n]).max() < 1e-3


def test_streamed_bad_audio_is_refused_with_load_audio_s_reason(tmp_path: Path) -> None:
    wav = audio_bytes(sine(1.0, SAMPLE_RATE), SAMPLE_RATE)
    flac = audio_bytes(sine(1.0, SAMPLE_RATE), SAMPLE_RATE, fmt="FLAC")
    nan = sine(1.0, SAMPLE_RATE)
    nan[9000] = np.inf
    cases = {
        "truncated.wav": wav[: len(wav) // 2],
        "truncated.flac": flac[: len(flac) // 2],
        "garbage.wav": b"RIFF but not really" * 10,
        "empty.wav": b"",
        "inf.wav": audio_bytes(nan, SAMPLE_RATE, subtype="FLOAT"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AudioError) as whole:
            load_audio(tmp_path / name)
        with pytest.raises(AudioError) as streamed:
            list(stream_audio(tmp_path / name, block_seconds=0.1))
        assert streamed.value.reason == whole.value.reason, name


# ---------------------------------------------------------------------------------------------------- subtitles


def test_cues_split_at_word_count_duration_and_pauses_and_format_as_srt_and_vtt() -> None:
    words = [TimedWord(f"w{i}", i * 0.5, i * 0.5 + 0.3) for i in range(10)]
    words.append(TimedWord("late", 3661.5, 3662.25))  # after a long pause; past one hour
    cues = subtitles.cues(words, max_words=4, max_seconds=100.0)
    assert [c.text for c in cues] == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9", "late"]
    assert [c.text for c in subtitles.cues(words[:10], max_words=100, max_seconds=1.35)] == [
        "w0 w1 w2",
        "w3 w4 w5",
        "w6 w7 w8",
        "w9",
    ]
    srt = subtitles.to_srt(cues)
    assert srt.splitlines()[:4] == ["1", "00:00:00,000 --> 00:00:01,800", "w0 w1 w2 w3", ""]
    assert srt.splitlines()[-3:] == ["4", "01:01:01,500 --> 01:01:02,250", "late"]
    vtt = subtitles.to_vtt(cues)
    assert vtt.splitlines()[:4] == ["WEBVTT", "", "00:00:00.000 --> 00:00:01.800", "w0 w1 w2 w3"]
    assert subtitles.vtt_time(59.9996) == "00:01:00.000" and subtitles.srt_time(0.0004) == "00:00:00,000"
    # A one-frame word still gets a visible cue.
    [cue] = subtitles.cues([TimedWord("a", 2.0, 2.0)])
    assert cue.end > cue.start


# ---------------------------------------------------------------------------------- batching on a tiny model


def _tiny(root: Path, **overrides: Any) -> Path:
    """A fixed-seed tiny model saved as transcribe loads it; ``overrides`` change its config."""
    text.save_vocab(VOCAB, root / "vocab.json")
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="tiny"), len(VOCAB), BLANK)
    if overrides:
        torch.manual_seed(0)
        model = type(model)(tiny_config(vocab_size=len(VOCAB), pad_token_id=BLANK, **overrides))
    model.save_pretrained(root / "model")
    processor = build_processor(root / "vocab.json")
    if "feat_extract_norm" in overrides:  # as XLSR-53-era group-norm models ship: no attention mask
        processor.feature_extractor.return_attention_mask = False
    processor.save_pretrained(root / "model")
    return root / "model"


def _demo_files(root: Path, count: int) -> list[Path]:
    voices = demo.speakers(5, "eval")
    files = []
    for i in range(count):
        row = demo.utterance(5, "eval", i, voices)
        files.append(root / f"u{i}.flac")
        files[-1].write_bytes(row["audio"])
    return files


def test_batched_files_give_the_greedy_ids_they_give_alone_in_the_input_order(tmp_path: Path) -> None:
    from xlsr_dist.transcribe import load

    model, processor, dev = load(_tiny(tmp_path), "cpu")
    files = _demo_files(tmp_path, 13)
    alone = Transcriber(model, processor, dev, batch_size=1)
    batched = Transcriber(model, processor, dev, batch_size=4)
    assert batched.takes_mask
    one = list(alone.results(files))
    many = list(batched.results(files))
    assert [r.file for r in many] == [str(f) for f in files]
    assert [r.words for r in many] == [r.words for r in one]
    # Greedy ids frame by frame, and the log-probabilities themselves, not only the collapsed text.
    waves = [np.concatenate(list(stream_audio(f))) for f in files]
    padded = batched.log_probs(waves)
    for lp, f in zip(padded, files):
        single = alone.file_log_probs(f)
        assert lp.shape == single.shape
        np.testing.assert_array_equal(lp.argmax(axis=-1), single.argmax(axis=-1))
        assert np.abs(lp - single).max() < 1e-4


def test_a_model_without_attention_mask_is_never_padded(tmp_path: Path) -> None:
    from xlsr_dist.transcribe import load

    model, processor, dev = load(_tiny(tmp_path, feat_extract_norm="group"), "cpu")
    files = _demo_files(tmp_path, 6)
    waves = [np.concatenate(list(stream_audio(f))) for f in files]
    # Why: group norm takes its statistics over the padded length, so padding changes the output.
    inputs = processor(waves[:2], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    with torch.inference_mode():
        padded = model(inputs.input_values).logits[0, : output_frames(model.config, waves[0].shape[0])]
        alone = model(processor(waves[0], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values).logits[0]
    assert waves[0].shape[0] != waves[1].shape[0] and (padded - alone).abs().max() > 1e-3
    batched = Transcriber(model, processor, dev, batch_size=4)
    assert not batched.takes_mask and batched.batch_size == 1
    one = list(Transcriber(model, processor, dev, batch_size=1).results(files))
    assert [r.words for r in batched.results(files)] == [r.words for r in one]


def test_a_long_file_resampled_and_stereo_streams_in_windows_as_one_file_would_run(tmp_path: Path) -> None:
    from xlsr_dist.transcribe import load

    model, processor, dev = load(_tiny(tmp_path), "cpu")
    files = _demo_files(tmp_path, 3)
    wave = np.concatenate([np.concatenate(list(stream_audio(f))) for f in files])
    sf.write(tmp_path / "long.wav", np.stack([wave, wave], axis=1), SAMPLE_RATE)
    chunked = Transcriber(model, processor, dev, chunk_s=1.0, stride_s=0.25, batch_size=3)
    lp = chunked.file_log_probs(tmp_path / "long.wav")
    assert lp.shape[0] == output_frames(model.config, wave.shape[0])
    assert chunked.plan is not None and len(windows(chunked.plan, wave.shape[0])) > 2
    # Frames far from any window edge see the same audio as in one pass... up to the attention's reach: the tiny
    # model's ids agree on most frames.
    whole = Transcriber(model, processor, dev, chunk_s=0).file_log_probs(tmp_path / "long.wav")
    assert whole.shape == lp.shape
    assert (whole.argmax(-1) == lp.argmax(-1)).mean() > 0.9


# ------------------------------------------------------------------------------------------------ command line


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_jsonl_srt_and_vtt_outputs_and_an_unreadable_file_among_batched_ones(tmp_path: Path) -> None:
    model = _tiny(tmp_path)
    files = _demo_files(tmp_path, 5)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    order = [str(files[3]), str(bad), *map(str, files[:3]), str(files[4])]
    tsv = _run("--model", str(model), *order)
    batched = _run("--model", str(model), "--batch_size", "3", "--format", "jsonl", "--timestamps", "word", *order)
    assert tsv.returncode == batched.returncode == 1
    told = [line for line in batched.stderr.splitlines() if line.startswith("xlsr_dist.transcribe:")]
    assert len(told) == 1 and str(bad) in told[0]
    records = [json.loads(line) for line in batched.stdout.splitlines()]
    good = [f for f in order if f != str(bad)]
    assert [r["file"] for r in records] == good  # the input order, though run shortest first
    assert [f"{r['file']}\t{r['text']}" for r in records] == tsv.stdout.splitlines()
    for r in records:
        assert " ".join(w["word"] for w in r["words"]) == r["text"]
        starts = [w["start"] for w in r["words"]]
        assert starts == sorted(starts) and all(0 <= w["start"] < w["end"] for w in r["words"])
    # Subtitles: stdout for one file; one file per input under --output_dir.
    one = _run("--model", str(model), "--format", "srt", good[0])
    assert one.returncode == 0 and one.stdout.startswith("1\n00:00:")
    assert _srt_text(one.stdout) == records[0]["text"]
    out = tmp_path / "subs"
    many = _run("--model", str(model), "--format", "vtt", "--output_dir", str(out), *good)
    assert many.returncode == 0, many.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{Path(f).stem}.vtt" for f in good)
    vtt = (out / f"{Path(good[0]).stem}.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and _srt_text(vtt) == records[0]["text"]


def _srt_text(doc: str) -> str:
    """The words of SRT/WebVTT cues in order, without numbers, times or the header."""
    lines = [x for x in doc.splitlines() if x and x != "WEBVTT" and "-->" not in x and not x.isdigit()]
    return " ".join(lines)


# ------------------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--chunk_s", "4", "--stride_s", "2"], "--stride_s"),
        (["--chunk_s", "-1"], "--chunk_s"),
        (["--batch_size", "0"], "--batch_size"),
        (["--timestamps", "word"], "--timestamps"),
        (["--format", "srt", "a.wav", "b.wav"], "--format srt"),
        (["--format", "vtt", "--output_dir", "o", "x/a.wav", "y/a.wav"], "--output_dir"),
        (["--output_dir", "o"], "--output_dir"),
    ],
)
def test_user_errors_name_the_flag_and_exit_2(flags: list[str], flag: str, tmp_path: Path) -> None:
    files = [] if any(f.endswith(".wav") for f in flags) else ["a.wav"]
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", "--model", str(tmp_path), *flags, *files],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xlsr_dist.transcribe: {flag}") and "Traceback" not in done.stderr
