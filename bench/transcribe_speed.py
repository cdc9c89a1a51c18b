"""Transcription speed: real-time factor per CPU core of `python -m xlsr_dist.transcribe`'s paths.

    OMP_NUM_THREADS=1 flock /tmp/xlsr_cpu.lock python bench/transcribe_speed.py [--model DIR] [--long_s 600]
        [--files 200] [--batch_size 8] [--repeats 2]

On one core (OMP_NUM_THREADS=1), in this one process, on demo speech (xlsr_dist/data/demo.py's held-out speakers):
  one file      one 20 s file (one window), greedy: read, forward, decode
  long          one --long_s file (default 10 min) in --chunk_s 20 / --stride_s 3 windows, streamed from FLAC
  one by one    --files short files (demo utterances, 0.3-2.5 s), --batch_size 1
  batched       the same files, --batch_size N (shortest first, padded under the attention mask)
RTF = CPU seconds of this process / audio seconds (lower is faster; the per-core figure, unaffected by other jobs
sharing the cores); wall-clock seconds beside it. Without --model, a fixed-seed tiny model (random weights: speed
does not depend on what a model has learned); --architecture xlsr-53 times XLS-R's architecture the same way.
Each path runs --repeats times; the best run counts. Results go to stdout (markdown) and
bench/results/transcribe_speed.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests._long_audio import make_recording, write  # noqa: E402
from xlsr_dist import text  # noqa: E402
from xlsr_dist.audio import SAMPLE_RATE  # noqa: E402
from xlsr_dist.config import ModelConfig  # noqa: E402
from xlsr_dist.data import demo  # noqa: E402
from xlsr_dist.decoding.chunking import windows  # noqa: E402
from xlsr_dist.model import build_model, build_processor  # noqa: E402
from xlsr_dist.transcribe import Transcriber, load  # noqa: E402


def _model_dir(root: Path, architecture: str) -> Path:
    vocab = text.build_vocab(demo.WORDS)
    text.save_vocab(vocab, root / "vocab.json")
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture=architecture), len(vocab), vocab[text.PAD])
    model.save_pretrained(root / "model")
    build_processor(root / "vocab.json").save_pretrained(root / "model")
    return root / "model"


def _short_files(root: Path, count: int) -> tuple[list[Path], float]:
    voices = demo.speakers(42, "eval")
    files, seconds = [], 0.0
    for i in range(count):
        row = demo.utterance(42, "eval", 1000 + i, voices)
        files.append(root / f"short{i:04d}.flac")
        files[-1].write_bytes(row["audio"])
        seconds += row["duration"]
    return files, seconds


def _timed(run: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(best CPU seconds, its wall seconds) over ``repeats`` runs."""
    best: tuple[float, float] | None = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        got = (time.process_time() - cpu, time.perf_counter() - wall)
        best = got if best is None or got[0] < best[0] else best
    assert best is not None
    return best


def _row(name: str, audio_s: float, timing: tuple[float, float], note: str = "") -> dict[str, Any]:
    cpu, wall = timing
    return {"path": name, "audio_s": round(audio_s, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "rtf_per_core": round(cpu / audio_s, 4), "note": note}  # fmt: skip


def measure(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    model_dir = Path(args.model) if args.model else _model_dir(root, args.architecture)
    model, processor, dev = load(model_dir, "cpu")
    one = Transcriber(model, processor, dev, chunk_s=args.chunk_s, stride_s=args.stride_s)
    batched = Transcriber(
        model, processor, dev, chunk_s=args.chunk_s, stride_s=args.stride_s, batch_size=args.batch_size
    )
    recording = make_recording(args.long_s)
    long_file = write(recording, root / "long.flac")
    twenty = write(recording, root / "twenty.flac", seconds=20.0)
    files, short_s = _short_files(root, args.files)
    rows = [
        _row("one file (20 s, one window)", 20.0, _timed(lambda: list(one.results([twenty])), args.repeats)),
        _row(
            f"long ({args.long_s / 60:g} min, chunk {args.chunk_s:g} s, stride {args.stride_s:g} s)",
            recording.wave.shape[0] / SAMPLE_RATE,
            _timed(lambda: list(one.results([long_file])), args.repeats),
            f"{len(windows(one.plan, recording.wave.shape[0])) if one.plan else 1} windows",
        ),
        _row(f"{args.files} short files one by one", short_s, _timed(lambda: list(one.results(files)), args.repeats)),
        _row(
            f"{args.files} short files, batch {args.batch_size}",
            short_s,
            _timed(lambda: list(batched.results(files)), args.repeats),
        ),
    ]
    same = [r.words for r in one.results(files)] == [r.words for r in batched.results(files)]
    rows[-1]["note"] = f"same words as one by one: {same}"
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="", help="a model dir (default: a fixed-seed random one of --architecture)")
    p.add_argument("--architecture", default="tiny", choices=("tiny", "xlsr-53"))
    p.add_argument("--long_s", type=float, default=600.0)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--chunk_s", type=float, default=20.0)
    p.add_argument("--stride_s", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"transcribe speed, {args.model or args.architecture + ' (random weights)'}, one core, {machine}\n")
    print("| path | audio s | CPU s | wall s | RTF per core | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['audio_s']} | {r['cpu_s']} | {r['wall_s']} | {r['rtf_per_core']} | {r['note']} |")
    out = ROOT / "bench" / "results" / "transcribe_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.write_text(json.dumps({"when": stamp, "machine": machine, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
