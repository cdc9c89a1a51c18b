"""Long recordings with a model that has learned (the demo, trained once per session on 2 ranks): a 10-minute
recording of held-out demo speakers transcribes in windows with the peak memory of a 1-minute one, its text matches
the utterances transcribed one by one up to a measured word error, chunking alone changes no greedy output far from
a window edge, and word timestamps fall within 60 ms of the synthesiser's word boundaries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from tests._long_audio import Recording, make_recording, write
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.decoding.chunking import windows
from xlsr_dist.transcribe import Transcriber, load

REPO = Path(__file__).resolve().parent.parent
LONG_S, SHORT_S = 600.0, 60.0
# The transcribe command, then its peak RSS since exec on stderr (VmHWM: ru_maxrss would carry pytest's own peak
# into the vforked child).
_PEAK = (
    "import re, sys\n"
    "from pathlib import Path\n"
    "from xlsr_dist import transcribe\n"
    "try:\n"
    "    transcribe.main(sys.argv[1:])\n"
    "finally:\n"
    "    status = Path('/proc/self/status').read_text()\n"
    "    print('peak_kb', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
)


def _transcribe_peak(model: Path, audio: Path) -> tuple[dict[str, Any], float]:
    """(the jsonl record with word timestamps, peak RSS in MB) of `python -m xlsr_dist.transcribe` on one file."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, "--model", str(model), "--device", "cpu", "--format", "jsonl"]
        + ["--timestamps", "word", str(audio)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [peak] = re.findall(r"^peak_kb (\d+)$", done.stderr, re.MULTILINE)
    return json.loads(done.stdout), int(peak) / 1024


@pytest.fixture(scope="module")
def long_run(trained_demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("long")
    recording = make_recording(LONG_S)
    long_file, short_file = write(recording, root / "long.flac"), write(recording, root / "short.flac", SHORT_S)
    chunked, long_peak = _transcribe_peak(trained_demo_model, long_file)
    _, short_peak = _transcribe_peak(trained_demo_model, short_file)
    model, processor, dev = load(trained_demo_model, "cpu")
    transcriber = Transcriber(model, processor, dev, batch_size=16)
    waves = [recording.wave[u.start : u.end] for u in recording.utterances]
    per_utterance = [
        transcriber.words(lp) for k in range(0, len(waves), 16) for lp in transcriber.log_probs(waves[k : k + 16])
    ]
    return {
        "recording": recording,
        "chunked": chunked,
        "per_utterance": " ".join(w.text for words in per_utterance for w in words),
        "peaks": (short_peak, long_peak),
        "transcriber": transcriber,
        "short_file": short_file,
    }


@pytest.mark.slow
def test_ten_minutes_peak_within_20_percent_of_one_minute(long_run: dict[str, Any]) -> None:
    short_peak, long_peak = long_run["peaks"]
    # 9 more minutes of float32 audio: what reading the file whole would add at least.
    extra_audio_mb = (LONG_S - SHORT_S) * SAMPLE_RATE * 4 / 2**20
    print(f"peak RSS (VmHWM) of transcribe: {SHORT_S:g} s {short_peak:.0f} MB, {LONG_S:g} s {long_peak:.0f} MB")
    assert long_peak <= 1.2 * short_peak, (short_peak, long_peak)
    assert long_peak - short_peak < extra_audio_mb, (short_peak, long_peak, extra_audio_mb)


def _wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(reference, hypothesis))


@pytest.mark.slow
def test_chunked_text_matches_the_utterances_transcribed_one_by_one(long_run: dict[str, Any]) -> None:
    recording: Recording = long_run["recording"]
    truth = " ".join(u.text for u in recording.utterances)
    chunked, per_utterance = long_run["chunked"]["text"], long_run["per_utterance"]
    between = _wer(per_utterance, chunked)
    figures = (
        f"WER chunked vs one by one {between:.4f}; vs the truth: chunked {_wer(truth, chunked):.4f}, "
        f"one by one {_wer(truth, per_utterance):.4f} ({len(truth.split())} words)"
    )
    print(figures)
    # Each window is normalised on its own (as HF's pipeline does), each utterance alone on its own: their words
    # differ by a few percent, and the long transcript is about as accurate as the utterances one by one.
    assert between <= 0.10, figures
    assert _wer(truth, chunked) <= _wer(truth, per_utterance) + 0.03, figures


@pytest.mark.slow
def test_chunking_alone_changes_no_greedy_id_far_from_a_window_edge(long_run: dict[str, Any]) -> None:
    """With the per-input normalisation off, the windows see exactly the samples one pass sees: what differs
    is the context beyond the window, which should only matter near its edges."""
    transcriber: Transcriber = long_run["transcriber"]
    extractor = transcriber.processor.feature_extractor
    model, processor, dev = transcriber.model, transcriber.processor, transcriber.device
    extractor.do_normalize = False
    try:
        one_pass = Transcriber(model, processor, dev, chunk_s=0).file_log_probs(long_run["short_file"])
        chunker = Transcriber(model, processor, dev)
        chunked = chunker.file_log_probs(long_run["short_file"])
    finally:
        extractor.do_normalize = True
    assert chunker.plan is not None
    ws = windows(chunker.plan, int(SHORT_S * SAMPLE_RATE))
    edges = np.array([w.first_frame + w.keep_to for w in ws[:-1]])
    assert len(edges) >= 3 and chunked.shape == one_pass.shape
    differ = np.flatnonzero(chunked.argmax(-1) != one_pass.argmax(-1))
    distance = np.abs(differ[:, None] - edges[None, :]).min(axis=1) * transcriber.frame_seconds
    print(f"greedy ids differing: {differ.size} of {one_pass.shape[0]} frames, at {distance.round(2).tolist()} s")
    assert (distance > 1.0).sum() == 0


@pytest.mark.slow
def test_word_timestamps_fall_within_60_ms_of_the_known_boundaries(long_run: dict[str, Any]) -> None:
    recording: Recording = long_run["recording"]
    record = long_run["chunked"]
    truth = " ".join(w.text for w in recording.words)
    assert " ".join(w["word"] for w in record["words"]) == record["text"]
    start_err, end_err = [], []
    for chunk in jiwer.process_words(truth, record["text"]).alignments[0]:
        if chunk.type != "equal":
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            known, heard = recording.words[chunk.ref_start_idx + k], record["words"][chunk.hyp_start_idx + k]
            assert known.text == heard["word"]
            start_err.append(heard["start"] - known.start / SAMPLE_RATE)
            end_err.append(heard["end"] - known.end / SAMPLE_RATE)
    starts, ends = np.abs(start_err), np.abs(end_err)
    within = float(((starts <= 0.06) & (ends <= 0.06)).mean())
    print(
        f"{len(starts)} of {len(recording.words)} words recognised; start and end within 60 ms: {within:.4f}; "
        f"95th percentile |error| start {np.percentile(starts, 95) * 1000:.0f} ms, end "
        f"{np.percentile(ends, 95) * 1000:.0f} ms; mean error start {np.mean(start_err) * 1000:+.0f} ms, end "
        f"{np.mean(end_err) * 1000:+.0f} ms"
    )
    assert len(starts) >= 0.9 * len(recording.words)
    assert within >= 0.95
