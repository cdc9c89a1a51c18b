"""LM beam search speed: real-time factor per CPU core of greedy decoding against pyctcdecode + KenLM beam search
at a few beam widths, with the WER and CER each gives.

    OMP_NUM_THREADS=1 flock /tmp/xlsr_cpu.lock python bench/lm_speed.py --model RUN_OR_EXPORT --lm LM_DIR \
        --data SHARDS [--beam_widths 8 32 100] [--repeats 3]

One process, one thread (torch.set_num_threads(1)). The model runs on each utterance alone (batch 1, fp32): reading
and decoding its FLAC, the forward and log-softmax are "forward"; each decoder then decodes the same log-probs.
RTF = CPU seconds of this process (time.process_time: the per-core figure, unaffected by other jobs sharing the
cores) / audio seconds; wall seconds are printed beside it. Each decoder runs --repeats times; the fastest counts.
The LM's stored alpha/beta are used (tuned by `evaluate --tune_lm`, else pyctcdecode's defaults). Results go to
stdout (markdown) and bench/results/lm_speed.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsr_dist import text
from xlsr_dist.decoding import beam, greedy
from xlsr_dist.evaluation import lm_eval
from xlsr_dist.evaluation.counts import error_counts
from xlsr_dist.evaluation.run import build_set, load_model, read_set

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """(result, fastest CPU seconds, wall seconds of that run)."""
    best: tuple[Any, float, float] | None = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if best is None or cpu < best[1]:
            best = (result, cpu, wall)
    assert best is not None  # repeats >= 1 (argparse)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--lm", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--beam_widths", type=int, nargs="+", default=[8, 32, 100])
    p.add_argument("--repeats", type=int, default=3, choices=range(1, 20), metavar="N")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, vocab = load_model(args.model)
    paths, meta = read_set(args.data)
    test_set = build_set("bench", args.data, paths, meta, vocab, Path(tempfile.mkdtemp()))
    audio_s = float(test_set.catalog.durations.sum())
    log_probs, fwd_cpu, fwd_wall = _timed(
        lambda: lm_eval.log_probs_of(model, test_set.catalog, torch.device("cpu"), 1, "fp32"), 1
    )
    refs = [test_set.references[uid] for uid, _ in log_probs]
    inverse, blank = text.inverse(vocab), vocab[text.PAD]
    decoders: list[tuple[str, int, Callable[[np.ndarray], str]]] = [
        ("greedy", 1, lambda lp: greedy.ctc_greedy_decode(lp.argmax(-1).tolist(), inverse, blank))
    ]
    for width in args.beam_widths:
        d = beam.load_beam_decoder(args.lm, inverse, beam_width=width)
        decoders.append((f"beam + LM (alpha {d.alpha:g}, beta {d.beta:g})", width, d.decode_text))
    rows = []
    for name, width, decode in decoders:
        hyps, cpu, wall = _timed(lambda decode=decode: [decode(lp) for _, lp in log_probs], args.repeats)
        c = error_counts(refs, hyps)
        rows.append(
            {
                "decoder": name,
                "beam_width": width,
                "decode_cpu_s": cpu,
                "decode_wall_s": wall,
                "rtf_decode": cpu / audio_s,
                "rtf_total": (cpu + fwd_cpu) / audio_s,
                "wer": c.word_errors / max(c.words, 1),
                "cer": c.char_errors / max(c.chars, 1),
            }
        )
    print(f"{len(log_probs)} utterances, {audio_s:.1f} s of audio; forward {fwd_cpu:.2f} CPU s ({fwd_wall:.2f} s wall)")
    print("\n| decoder | beam | decode CPU s | RTF decode | RTF forward + decode | WER | CER |")
    print("|:--|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['decoder']} | {r['beam_width']} | {r['decode_cpu_s']:.3f} | {r['rtf_decode']:.4f} | "
            f"{r['rtf_total']:.4f} | {r['wer']:.4f} | {r['cer']:.4f} |"
        )
    record = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "args": vars(args),
        "utterances": len(log_probs),
        "audio_s": audio_s,
        "forward_cpu_s": fwd_cpu,
        "rows": rows,
    }
    out = ROOT / "bench" / "results" / "lm_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
