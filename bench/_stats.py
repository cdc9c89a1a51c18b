"""The arithmetic of bench/train_speed.py, pure (no processes, no I/O): step times from boundaries, padding, audio
throughput, the data-split check, FLOP estimates and the markdown table."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from xlsr_dist.audio import SAMPLE_RATE

# Dense fp16/bf16 tensor-core peak (TFLOP/s) by device-name fragment, most specific first.
PEAK_TFLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("V100", 125.0),
    ("T4", 65.0),
)


def intervals(boundaries: Sequence[float]) -> list[float]:
    """Step wall times from consecutive boundaries (boundary k is where step k starts; the last ends the last)."""
    return [b - a for a, b in zip(boundaries, boundaries[1:])]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def padding_fraction(real_samples: float, padded_samples: float) -> float:
    """Padding / everything the model computed on."""
    total = real_samples + padded_samples
    return padded_samples / total if total else 0.0


def micro_padded(micro: dict[str, Any]) -> int:
    return int(micro["batch"]) * int(micro["max_samples"]) - int(micro["real"])


def split_problems(records: Sequence[dict[str, Any]], global_batch: int, steps: int) -> list[str]:
    """Each step must train ``global_batch`` distinct utterances, each rank its own share: the benchmark compares
    runs that really split the data (the baseline's ranks once all trained the same batches)."""
    problems: list[str] = []
    by_step: dict[int, dict[int, list[str]]] = {}
    for rec in records:
        for m in rec["micro"]:
            by_step.setdefault(int(m["step"]), {}).setdefault(int(rec["rank"]), []).extend(m["ids"])
    missing = [s for s in range(steps) if s not in by_step]
    if missing:
        problems.append(f"no batches recorded for step(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    for step in sorted(by_step):
        if step >= steps:
            continue  # a prefetched batch the loop never trained on
        per_rank = by_step[step]
        ranks = sorted(per_rank)
        if len(ranks) != len(records):
            problems.append(f"step {step}: batches from ranks {ranks}, expected {len(records)} ranks")
        seen: dict[str, int] = {}
        for r in ranks:
            for uid in per_rank[r]:
                if uid in seen:
                    problems.append(f"step {step}: utterance {uid} trained by rank {seen[uid]} and rank {r}")
                seen[uid] = r
        total = sum(len(v) for v in per_rank.values())
        if total != global_batch:
            problems.append(f"step {step}: {total} utterances over all ranks, expected the global batch {global_batch}")
    return problems


def wav2vec2_forward_flops(cfg: Any, batch: int, samples: int) -> tuple[float, float]:
    """(feature-encoder FLOPs, FLOPs of the rest) of one forward pass over a [batch, samples] padded input.

    Multiply-adds count 2; matmuls and convolutions only (norms, activations, softmax are a few percent at most).
    ``cfg`` is a Wav2Vec2Config (or anything with its attribute names).
    """
    length, c_in, encoder = int(samples), 1, 0.0
    for c_out, kernel, stride in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride):
        length = (length - kernel) // stride + 1
        if length <= 0:
            return 0.0, 0.0
        encoder += 2.0 * batch * length * c_out * c_in * kernel
        c_in = c_out
    frames, h = length, cfg.hidden_size
    projection = 2.0 * batch * frames * cfg.conv_dim[-1] * h
    positional = 2.0 * batch * frames * h * (h // cfg.num_conv_pos_embedding_groups) * cfg.num_conv_pos_embeddings
    layer = 2.0 * batch * frames * (4 * h * h + 2 * h * cfg.intermediate_size) + 4.0 * batch * frames * frames * h
    head = 2.0 * batch * frames * h * cfg.vocab_size
    return encoder, projection + positional + cfg.num_hidden_layers * layer + head


def wav2vec2_train_flops(cfg: Any, batch: int, samples: int, frozen_feature_encoder: bool) -> float:
    """FLOPs of forward + backward on one micro-batch: backward costs twice the forward of what is trained; a frozen
    feature encoder gets no backward at all (its input needs no gradient either)."""
    encoder, rest = wav2vec2_forward_flops(cfg, batch, samples)
    return encoder * (1.0 if frozen_feature_encoder else 3.0) + 3.0 * rest


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense 16-bit tensor peak of a known GPU; None for fp32, CPUs and unknown cards."""
    if precision not in ("fp16", "bf16"):
        return None
    for fragment, peak in PEAK_TFLOPS_16BIT:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def summarize_run(
    records: Sequence[dict[str, Any]], warmup: int, global_batch: int, flops_fn: Any = None
) -> dict[str, Any]:
    """One run (all its ranks' records) -> its figures over the steps after ``warmup``.

    Step time is rank 0's boundary interval (ranks advance in lockstep: every step ends in collectives).
    """
    recs = sorted(records, key=lambda r: r["rank"])
    times = intervals(recs[0]["boundaries"])
    steps = len(times)
    measured = list(range(min(warmup, steps), steps))
    real = padded = 0
    utterances = 0
    flops = 0.0
    for rec in recs:
        for m in rec["micro"]:
            if int(m["step"]) not in measured:
                continue
            real += int(m["real"])
            padded += micro_padded(m)
            utterances += len(m["ids"])
            if flops_fn is not None:
                flops += flops_fn(int(m["batch"]), int(m["max_samples"]))
    wall = sum(times[s] for s in measured)
    cpu = cpu_per_step(recs, steps)
    cpu_measured = [cpu[s] for s in measured] if cpu else []
    ready = recs[0].get("data_ready") or []
    waits = [ready[s] - recs[0]["boundaries"][s] for s in measured if s < len(ready)]
    out: dict[str, Any] = {
        "steps": steps,
        "measured_steps": len(measured),
        "step_times": [times[s] for s in measured],
        "median_step_s": median([times[s] for s in measured]),
        "data_waits": waits,
        "median_data_wait_s": median(waits) if waits else None,
        "wall_s": wall,
        "audio_s": real / SAMPLE_RATE,
        "audio_s_per_s": real / SAMPLE_RATE / wall if wall > 0 else float("nan"),
        "utterances": utterances,
        "utterances_per_s": utterances / wall if wall > 0 else float("nan"),
        "padding_fraction": padding_fraction(real, padded),
        "cpu_step_times": cpu_measured,
        "median_cpu_step_s": median(cpu_measured) if cpu_measured else None,
        "cpu_s": sum(cpu_measured),
        "audio_s_per_cpu_s": real / SAMPLE_RATE / sum(cpu_measured) if cpu_measured and sum(cpu_measured) > 0 else None,
        "flops": flops,
        "peak_rss_steps": [r.get("peak_rss_steps") for r in recs],
        "peak_rss_process": [r.get("peak_rss_process") for r in recs],
        "cuda_max_allocated": [r.get("cuda_max_allocated") for r in recs],
        "device_name": recs[0].get("device_name", "cpu"),
        "startup_s": recs[0].get("startup_s"),
        "preprocess_s": recs[0].get("preprocess_s"),
        "preprocess_utterances": recs[0].get("preprocess_utterances"),
        "decode_s": recs[0].get("decode_s"),
        "decode_utterances": recs[0].get("decode_utterances"),
        "split_problems": split_problems(recs, global_batch, steps),
        # Ranks that exited non-zero after writing their record (after the measured steps): reported, not fatal.
        "exits_after_steps": {str(r["rank"]): r["exit_code"] for r in recs if r.get("exit_code") not in (0, None)},
    }
    profiles = [r.get("profile") or [] for r in recs]
    if profiles[0]:
        out["profile"] = profile_summary(profiles[0], warmup)
    return out


def cpu_per_step(records: Sequence[dict[str, Any]], steps: int) -> list[float]:
    """CPU seconds each step cost, all ranks together, their DataLoader workers' share included (spread evenly
    over the run's steps); [] when a record has no CPU clock. Wall time on a shared machine counts other users'
    load; CPU time mostly does not."""
    total = [0.0] * steps
    for rec in records:
        cpu = intervals(rec.get("cpu_boundaries") or [])
        if len(cpu) < steps:
            return []
        children = rec.get("children_cpu") or []
        worker = (children[-1] - children[0]) / steps if len(children) >= 2 and steps else 0.0
        for s in range(steps):
            total[s] += cpu[s] + worker
    return total


def profile_summary(per_step: Sequence[dict[str, float]], warmup: int) -> dict[str, float]:
    """Median seconds per part over the steps after ``warmup`` (``other`` = the step minus the named parts)."""
    steps = list(per_step)[warmup:] or list(per_step)
    parts = sorted({k for s in steps for k in s})
    return {k: median([s.get(k, 0.0) for s in steps]) for k in parts}


def summarize_side(runs: Sequence[dict[str, Any]], world_size: int) -> dict[str, Any]:
    """Runs of one side of one case -> pooled figures (median over all measured steps of all runs)."""
    times = [t for r in runs for t in r["step_times"]]
    waits = [w for r in runs for w in r.get("data_waits", [])]
    cpu_times = [t for r in runs for t in r.get("cpu_step_times", [])]
    cpu_total = sum(r.get("cpu_s", 0.0) for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    audio = sum(r["audio_s"] for r in runs)
    rss = [
        max(v for v in r["peak_rss_steps"] if v is not None)
        for r in runs
        if any(v is not None for v in r["peak_rss_steps"])
    ]
    rss_process = [
        max(v for v in r["peak_rss_process"] if v is not None)
        for r in runs
        if any(v is not None for v in r["peak_rss_process"])
    ]
    cuda = [
        max(v for v in r["cuda_max_allocated"] if v is not None)
        for r in runs
        if any(v is not None for v in r["cuda_max_allocated"])
    ]
    real_pad = [(r["audio_s"], r["padding_fraction"]) for r in runs]
    # Padding over all runs: weight each run's fraction by what it computed (real / (1 - fraction)).
    computed = sum(a / (1.0 - p) for a, p in real_pad if p < 1.0)
    flops = sum(r["flops"] for r in runs)
    out = {
        "runs": len(runs),
        "measured_steps": len(times),
        "median_step_s": median(times),
        "run_medians_s": [r["median_step_s"] for r in runs],
        "median_data_wait_s": median(waits) if waits else None,
        "audio_s_per_s": audio / wall if wall > 0 else float("nan"),
        "median_cpu_step_s": median(cpu_times) if cpu_times else None,
        "audio_s_per_cpu_s": audio / cpu_total if cpu_total > 0 else None,
        "mean_utterance_s": audio / sum(r["utterances"] for r in runs) if sum(r["utterances"] for r in runs) else None,
        "utterances_per_s": sum(r["utterances_per_s"] * r["wall_s"] for r in runs) / wall if wall > 0 else 0.0,
        "padding_fraction": 1.0 - audio / computed if computed else 0.0,
        "peak_rss_steps_mb": median(rss) / 2**20 if rss else None,
        "peak_rss_process_mb": median(rss_process) / 2**20 if rss_process else None,
        "cuda_max_allocated_mb": median(cuda) / 2**20 if cuda else None,
        "tflops_per_device": flops / wall / world_size / 1e12 if wall > 0 and flops else None,
        "audio_hours_per_device_hour": audio / wall / world_size if wall > 0 else float("nan"),
    }
    preprocess = [r["preprocess_s"] for r in runs if r.get("preprocess_s") is not None]
    out["preprocess_s_max"] = max(preprocess) if preprocess else None
    # The uncached run's (the first of an invocation): the cost a corpus too big for the cache pays every epoch.
    per_utt = [r["preprocess_s"] / r["preprocess_utterances"] for r in runs if r.get("preprocess_utterances")]
    out["preprocess_ms_per_utterance"] = 1e3 * max(per_utt) if per_utt else None
    decode = [r["decode_s"] / r["decode_utterances"] for r in runs if r.get("decode_s") and r.get("decode_utterances")]
    out["decode_ms_per_utterance"] = 1e3 * median(decode) if decode else None
    startup = [r["startup_s"] for r in runs if r.get("startup_s") is not None]
    out["startup_s"] = median(startup) if startup else None
    profiles = [r["profile"] for r in runs if "profile" in r]
    if profiles:
        out["profile"] = profiles[0]
    out["exits_after_steps"] = [r.get("exits_after_steps", {}) for r in runs]
    return out


def ended(summary: dict[str, Any]) -> str:
    """The table's 'ended' cell: 'ok', or which runs had a rank exit non-zero after its measured steps."""
    notes = [
        f"run {i}: " + ", ".join(f"rank {rank} exit {code}" for rank, code in exits.items())
        for i, exits in enumerate(summary.get("exits_after_steps", []))
        if exits
    ]
    return "ok" if not notes else "crashed after its steps (" + "; ".join(notes) + ")"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def table(rows: Iterable[dict[str, Any]], cpu: bool = True) -> str:
    """Markdown table, one row per (case, side); ``cpu`` adds the CPU-time columns (CPU runs only)."""
    cols = (
        ["case", "side", "median step (s)"]
        + (["CPU s/step"] if cpu else [])
        + ["data wait (ms)", "audio s/s"]
        + (["audio s/CPU-s"] if cpu else [])
        + ["utt/s", "mean utt (s)", "padding", "peak mem/rank (MB)", "runs x steps", "ended"]
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        s = row["summary"]
        mem = (
            s.get("cuda_max_allocated_mb") if s.get("cuda_max_allocated_mb") is not None else s.get("peak_rss_steps_mb")
        )
        wait = s.get("median_data_wait_s")
        cells = [row["case"], row["side"], _fmt(s.get("median_step_s"), ".3f")]
        cells += [_fmt(s.get("median_cpu_step_s"), ".3f")] if cpu else []
        cells += [_fmt(wait * 1e3 if wait is not None else None, ".1f"), _fmt(s.get("audio_s_per_s"), ".1f")]
        cells += [_fmt(s.get("audio_s_per_cpu_s"), ".1f")] if cpu else []
        cells += [
            _fmt(s.get("utterances_per_s"), ".2f"),
            _fmt(s.get("mean_utterance_s"), ".2f"),
            _fmt(s.get("padding_fraction"), ".1%"),
            _fmt(mem, ".0f"),
            f"{s.get('runs', 0)} x {s.get('measured_steps', 0) // max(1, s.get('runs', 1))}",
            ended(s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_line(case: str, xlsr: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """xlsr_dist / baseline: step time (< 1 is faster), throughput (> 1 is faster), memory (< 1 is smaller)."""

    def mem(s: dict[str, Any]) -> float | None:
        return (
            s.get("cuda_max_allocated_mb") if s.get("cuda_max_allocated_mb") is not None else s.get("peak_rss_steps_mb")
        )

    return {
        "case": case,
        "step_time": ratio(xlsr.get("median_step_s"), base.get("median_step_s")),
        "audio_throughput": ratio(xlsr.get("audio_s_per_s"), base.get("audio_s_per_s")),
        "peak_memory": ratio(mem(xlsr), mem(base)),
        "cpu_step_time": ratio(xlsr.get("median_cpu_step_s"), base.get("median_cpu_step_s")),
        "audio_per_cpu_s": ratio(xlsr.get("audio_s_per_cpu_s"), base.get("audio_s_per_cpu_s")),
    }


def ratio_table(lines: Iterable[dict[str, Any]], cpu: bool = True) -> str:
    """xlsr_dist / baseline per case: time ratios < 1 and throughput ratios > 1 mean xlsr_dist is faster."""
    cols = ["case (xlsr_dist / baseline)", "median step time", "audio s/s"]
    cols += (["CPU s/step", "audio s per CPU-s"] if cpu else []) + ["peak mem/rank"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in lines:
        cells = [r["case"], f"{_fmt(r['step_time'], '.2f')}x", f"{_fmt(r['audio_throughput'], '.2f')}x"]
        if cpu:
            cells += [f"{_fmt(r.get('cpu_step_time'), '.2f')}x", f"{_fmt(r.get('audio_per_cpu_s'), '.2f')}x"]
        cells.append(f"{_fmt(r['peak_memory'], '.2f')}x")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
