"""Data-path benchmark: audio seconds per second on one core, xlsr_dist's stream against HF's CTC example.

    OMP_NUM_THREADS=1 flock /tmp/xlsr_cpu.lock python bench/data_path.py [--utterances 1500] [--repeats 3]

Paths measured on the same FLAC shards (a Common-Voice-like synthetic corpus: lognormal durations, median 4.8 s,
sigma 0.95, clipped to [1, 30] s -- calibrated so random batches of 8 (micro-batch 4) pad 39.7 %, the figure the
issue measured on Common Voice), all in this one process on one core:
  floor        pyarrow reads each shard's audio column whole + soundfile decodes every clip; nothing else
  xlsr_dist    TrainStream (world 1: micro-batch 4 x 2 accumulation, dataloader_num_workers 0) for one epoch:
               metadata + filtering + plan, per-row ranged reads through the shards' byte index, decode,
               normalise, bucket, collate (--no_index: the Parquet row-group reads it falls back to)
  hf map       run_speech_recognition_ctc.py's preprocessing: load_dataset("parquet") -> map(text clean-up) ->
               map(decode with soundfile [datasets 5 needs torchcodec to decode] + Wav2Vec2FeatureExtractor +
               tokenizer) -> filter(length), each writing its Arrow cache; then one epoch of
               DataCollatorCTCWithPadding over the cached features (batch 4)
  hf stream    load_dataset(..., streaming=True).map(the same prepare function), iterated once
  --augment    xlsr_dist's epoch with each training augmentation on vs off (bench/_augment.py)
Throughput is audio seconds per CPU second of this process (the per-core figure, unaffected by other jobs
sharing the cores); wall-clock figures are printed beside it. Each path runs --repeats times; the best run counts.
Results go to stdout (markdown) and bench/results/data_path_rgN.json (git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from bench import _augment  # noqa: E402
from xlsr_dist.audio import SAMPLE_RATE, encode_flac  # noqa: E402
from xlsr_dist.config import DataConfig, plan_batches  # noqa: E402
from xlsr_dist.data import shards  # noqa: E402
from xlsr_dist.data.partition import common_voice_like_durations, epoch_batches, padding_fraction  # noqa: E402
from xlsr_dist.data.stream import TrainStream  # noqa: E402
from xlsr_dist.text import build_vocab, save_vocab  # noqa: E402
from xlsr_dist.world import World  # noqa: E402

# Durations: Common Voice's median with a spread wide enough that random batching pads like the issue measured.
CV_MEDIAN_S, CV_SIGMA, CV_LO_S, CV_HI_S = 4.8, 0.95, 1.0, 30.0
MAX_SECONDS = CV_HI_S  # every path keeps every clip: they all process the same audio
MULTIPLIERS = (1, 10, 25, 50, 100, 200)

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly vexing bumpkins near "
    "old mills and rivers"
).split()


def frames(num_samples: int) -> int:
    return num_samples // 320


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Voiced harmonics with a wandering pitch and a syllable-rate envelope over a noise floor: compresses about
    like read speech under FLAC, so decode cost per second is realistic."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    wave = 0.15 * envelope * voiced + 0.01 * rng.standard_normal(n)
    return wave.astype(np.float32)


def cv_durations(n: int, seed: int) -> np.ndarray:
    return common_voice_like_durations(n, seed=seed, median_s=CV_MEDIAN_S, sigma=CV_SIGMA, lo=CV_LO_S, hi=CV_HI_S)


def make_corpus(
    root: Path, n: int, num_shards: int, seed: int, row_group_size: int = shards.ROW_GROUP_SIZE, index: bool = True
) -> tuple[str, dict[str, int], float]:
    rng = np.random.default_rng(seed)
    durations = cv_durations(n, seed)
    rows = []
    for i, d in enumerate(durations):
        words = " ".join(rng.choice(WORDS, size=max(1, int(d * 2.5))))
        rows.append(
            {
                "id": f"cv{i:06d}",
                "audio": encode_flac(speech_like(float(d), rng)),
                "text": words,
                "duration": float(d),
                "source": "synthetic",
            }
        )
    split = root / "train"
    for s in range(num_shards):
        path = split / shards.shard_name(s, num_shards)
        shards.write_shard(path, rows[s::num_shards], row_group_size)
        if not index:
            os.unlink(shards.index_path(path))
    vocab = build_vocab(r["text"] for r in rows)
    return str(split), vocab, float(durations.sum())


class Clock:
    """CPU seconds of this process (all its threads) and wall seconds. CPU time is the per-core figure: on a
    machine shared with other jobs, wall time also counts the time this process waited for a core."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def read(self) -> tuple[float, float]:
        return time.process_time() - self.cpu0, time.perf_counter() - self.wall0


def rates(audio: float, cpu: list[float], wall: list[float]) -> dict[str, Any]:
    """Best of the repeats (neighbours only ever slow a run down) and the median beside it."""
    return {
        "audio_s": round(audio, 1),
        "cpu_best": round(audio / min(cpu), 1),
        "cpu_median": round(audio / statistics.median(cpu), 1),
        "wall_best": round(audio / min(wall), 1),
    }


def timed(fn: Callable[[], float], repeats: int) -> dict[str, Any]:
    """Run ``fn`` (returns audio seconds processed) ``repeats`` times."""
    cpu, wall, audio = [], [], 0.0
    for _ in range(repeats):
        clock = Clock()
        audio = fn()
        c, w = clock.read()
        cpu.append(c)
        wall.append(w)
    return rates(audio, cpu, wall)


def floor_path(paths: list[str]) -> float:
    total = 0.0
    for p in paths:
        for b in pq.read_table(p, columns=["audio"]).column("audio").to_pylist():
            wave, sr = sf.read(io.BytesIO(b), dtype="float32")
            total += wave.shape[0] / sr
    return total


def ours_stream(location: str, vocab: dict[str, int], world_size: int = 1, rank: int = 0, **data: Any) -> TrainStream:
    shards.clear_cache()  # every repeat opens its files again, as a fresh run does
    plan = plan_batches(8, world_size)
    cfg = DataConfig(dataloader_num_workers=0, max_duration_in_seconds=MAX_SECONDS, **data)
    return TrainStream(location, World(rank=rank, world_size=world_size), plan, 42, vocab, cfg, frames)


def one_epoch(stream: TrainStream) -> float:
    total = 0.0
    gen = stream.steps(stream.initial_state())
    for _ in range(stream.steps_per_epoch):
        _, micro = next(gen)
        total += sum(b["audio_seconds"] for b in micro)
    gen.close()
    return total


def ours_path(location: str, vocab: dict[str, int], world_size: int = 1, rank: int = 0) -> float:
    return one_epoch(ours_stream(location, vocab, world_size, rank))


def after_start_up(
    location: str, vocab: dict[str, int], world_size: int, rank: int, repeats: int, **data: Any
) -> dict[str, Any]:
    """One epoch of a rank whose stream already exists: what a rank that maps its node's catalog pays (its share of
    the metadata work is the node's first rank's; bench/scale.py measures start-up)."""
    cpu, wall, audio = [], [], 0.0
    for _ in range(repeats):
        stream = ours_stream(location, vocab, world_size, rank, **data)
        clock = Clock()
        audio = one_epoch(stream)
        c, w = clock.read()
        cpu.append(c)
        wall.append(w)
    return rates(audio, cpu, wall)


def hf_tools(vocab_dir: Path) -> tuple[Any, Any]:
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_dir / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|"
    )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return tokenizer, feature_extractor


def hf_prepare_fn(tokenizer: Any, feature_extractor: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def prepare_dataset(batch: dict[str, Any]) -> dict[str, Any]:
        wave, sr = sf.read(io.BytesIO(batch["audio"]), dtype="float32")
        inputs = feature_extractor(wave, sampling_rate=sr)
        batch["input_values"] = inputs.input_values[0]
        batch["input_length"] = len(batch["input_values"])
        batch["labels"] = tokenizer(batch["target_text"]).input_ids
        return batch

    return prepare_dataset


def remove_special_characters(batch: dict[str, Any]) -> dict[str, Any]:
    batch["target_text"] = re.sub(r'[,?.!\-;:"“%‘”�]', "", batch["text"]).lower() + " "
    return batch


def hf_map_path(paths: list[str], vocab_dir: Path, cache_root: Path, timings: dict[str, list[float]]) -> float:
    """run_speech_recognition_ctc.py steps 1, 2 and 6 on local parquet, then one collated epoch."""
    import datasets

    cache = Path(tempfile.mkdtemp(dir=cache_root))
    tokenizer, feature_extractor = hf_tools(vocab_dir)
    clock = Clock()
    raw = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(cache))
    raw = raw.map(remove_special_characters, remove_columns=["text"])
    vectorized = raw.map(hf_prepare_fn(tokenizer, feature_extractor), remove_columns=raw.column_names)
    max_len, min_len = MAX_SECONDS * SAMPLE_RATE + 1, 0.0
    vectorized = vectorized.filter(lambda n: min_len < n < max_len, input_columns=["input_length"])
    pre_cpu, pre_wall = clock.read()
    audio = float(np.sum(vectorized["input_length"])) / SAMPLE_RATE
    # One training epoch as the Trainer feeds it: random order, batch 4, DataCollatorCTCWithPadding.
    clock = Clock()
    order = np.random.default_rng(0).permutation(len(vectorized))
    for start in range(0, len(order), 4):
        features = vectorized.select(order[start : start + 4].tolist())
        batch = feature_extractor.pad(
            [{"input_values": f} for f in features["input_values"]], padding=True, return_tensors="pt"
        )
        labels = tokenizer.pad([{"input_ids": f} for f in features["labels"]], padding=True, return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
    ep_cpu, ep_wall = clock.read()
    for key, value in (("pre_cpu", pre_cpu), ("pre_wall", pre_wall), ("ep_cpu", ep_cpu), ("ep_wall", ep_wall)):
        timings[key].append(value)
    shutil.rmtree(cache, ignore_errors=True)
    return audio


def hf_stream_path(paths: list[str], vocab_dir: Path) -> float:
    import datasets

    tokenizer, feature_extractor = hf_tools(vocab_dir)
    ds = datasets.load_dataset("parquet", data_files=paths, split="train", streaming=True)
    ds = ds.map(remove_special_characters).map(hf_prepare_fn(tokenizer, feature_extractor))
    return sum(item["input_length"] for item in ds) / SAMPLE_RATE


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "?")
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} CPU(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=1500)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--row_group_size",
        type=int,
        default=shards.ROW_GROUP_SIZE,
        help="utterances per Parquet row group of the bench shards (default: what prepare writes)",
    )
    parser.add_argument(
        "--no_index",
        action="store_true",
        help="write shards without their byte index (xlsr_dist reads Parquet row groups)",
    )
    parser.add_argument("--skip_hf", action="store_true", help="only the floor and xlsr_dist")
    parser.add_argument("--augment", action="store_true", help="also each training augmentation on vs off")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one xlsr_dist epoch")
    parser.add_argument("--results", default="", help="JSON output (default bench/results/data_path_rgN.json)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    work = Path(tempfile.mkdtemp(prefix="xlsr_data_bench_"))
    try:
        t = time.perf_counter()
        location, vocab, audio_total = make_corpus(
            work / "corpus", args.utterances, args.shards, args.seed, args.row_group_size, index=not args.no_index
        )
        save_vocab(vocab, work / "vocab.json")
        paths = shards.list_shards(location)
        print(
            f"corpus: {args.utterances} utterances, {audio_total / 3600:.2f} h, {args.shards} shards of "
            f"{args.row_group_size}-row groups, "
            f"{sum(os.path.getsize(p) for p in paths) / 1e6:.0f} MB (built in {time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        results: dict[str, Any] = {}
        results["floor"] = timed(lambda: floor_path(paths), args.repeats)
        print("floor", results["floor"], flush=True)
        cpu = []
        for _ in range(args.repeats):
            shards.clear_cache()
            clock = Clock()
            shards.read_metadata(paths)
            cpu.append(clock.read()[0])
        # Every rank pays this at start-up: it grows with the number of row groups, not with the audio.
        results["metadata_cpu_ms_per_1000_utterances"] = round(1e6 * min(cpu) / args.utterances, 1)
        results["xlsr_dist"] = timed(lambda: ours_path(location, vocab), args.repeats)
        print("xlsr_dist", results["xlsr_dist"], flush=True)
        results["xlsr_dist_rank0_of_8"] = timed(lambda: ours_path(location, vocab, 8, 0), args.repeats)
        print("xlsr_dist rank 0 of 8 (micro-batch 1)", results["xlsr_dist_rank0_of_8"], flush=True)
        results["xlsr_dist_rank1_of_8_after_start_up"] = after_start_up(location, vocab, 8, 1, args.repeats)
        print("xlsr_dist rank 1 of 8 after start-up", results["xlsr_dist_rank1_of_8_after_start_up"], flush=True)
        if args.augment:
            folders = _augment.make_folders(work / "augment")
            results["augmentation"] = _augment.results(
                lambda data, world, rank: after_start_up(location, vocab, world, rank, args.repeats, **data), folders
            )
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile(time.process_time)  # CPU time: waits for a shared core excluded
            profiler.runcall(ours_path, location, vocab)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        if not args.skip_hf:
            cache_root = work / "hf_cache"
            cache_root.mkdir()
            hf_t: dict[str, list[float]] = {"pre_cpu": [], "pre_wall": [], "ep_cpu": [], "ep_wall": []}
            audio = 0.0
            for _ in range(args.repeats):
                audio = hf_map_path(paths, work, cache_root, hf_t)
            first_cpu = [a + b for a, b in zip(hf_t["pre_cpu"], hf_t["ep_cpu"])]
            first_wall = [a + b for a, b in zip(hf_t["pre_wall"], hf_t["ep_wall"])]
            results["hf_map_preprocess"] = rates(audio, hf_t["pre_cpu"], hf_t["pre_wall"])
            results["hf_map_epoch_from_cache"] = rates(audio, hf_t["ep_cpu"], hf_t["ep_wall"])
            results["hf_map_first_epoch"] = rates(audio, first_cpu, first_wall)
            print("hf map", {k: v for k, v in results.items() if k.startswith("hf_map")}, flush=True)
            results["hf_stream"] = timed(lambda: hf_stream_path(paths, work), args.repeats)
            print("hf stream", results["hf_stream"], flush=True)

        durations = shards.read_metadata(paths).column("duration").to_numpy()
        big = cv_durations(20000, seed=1)
        padding = {}
        for name, d in (("bench corpus", durations), ("20000 CV-like", big)):
            for world in (1, 4, 8):
                p = plan_batches(8, world)
                padding[f"{name}, world {world} (micro {p.micro_batch})"] = {
                    str(m): round(100 * padding_fraction(d, epoch_batches(d, 0, 0, 8, m), p), 2) for m in MULTIPLIERS
                }
        results["padding_percent"] = padding
        results["durations"] = {"median_s": CV_MEDIAN_S, "sigma": CV_SIGMA, "clip_s": [CV_LO_S, CV_HI_S]}
        results["machine"] = machine()
        results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["command"] = " ".join(["python", "bench/data_path.py", *sys.argv[1:]])
        results["corpus"] = {
            "utterances": args.utterances,
            "hours": round(audio_total / 3600, 3),
            "shards": args.shards,
            "row_group_size": args.row_group_size,
            "byte_index": not args.no_index,
        }
        out = Path(
            args.results
            or Path(__file__).resolve().parent
            / "results"
            / f"data_path_rg{args.row_group_size}{'_noindex' if args.no_index else ''}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(report(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any]) -> str:
    floor = r["floor"]["cpu_best"]
    c = r["corpus"]
    lines = [
        f"machine: {r['machine']}; {r['date']}; `{r['command']}`",
        f"corpus: {c['utterances']} utterances, {c['hours']} h, {c['shards']} shards, row groups of "
        f"{c['row_group_size']}, byte index {'on' if c.get('byte_index', True) else 'off'}",
        "",
        "| path | audio-s per CPU-s (best) | median | audio-s per wall-s (best) | vs floor (CPU) |",
        "|---|---|---|---|---|",
    ]
    for key in (
        "floor",
        "xlsr_dist",
        "xlsr_dist_rank0_of_8",
        "xlsr_dist_rank1_of_8_after_start_up",
        "hf_map_preprocess",
        "hf_map_epoch_from_cache",
        "hf_map_first_epoch",
        "hf_stream",
    ):
        if key in r:
            v = r[key]
            lines.append(
                f"| {key} | {v['cpu_best']:.0f} | {v['cpu_median']:.0f} | {v['wall_best']:.0f} | "
                f"{v['cpu_best'] / floor:.2f}x |"
            )
    if "hf_map_preprocess" in r:
        ours = r["xlsr_dist"]["cpu_best"]
        lines.append("")
        lines.append(
            f"xlsr_dist vs hf map preprocess: {ours / r['hf_map_preprocess']['cpu_best']:.2f}x; vs hf map "
            f"first epoch: {ours / r['hf_map_first_epoch']['cpu_best']:.2f}x; vs hf stream: "
            f"{ours / r['hf_stream']['cpu_best']:.2f}x"
        )
    lines += ["", f"read_metadata: {r['metadata_cpu_ms_per_1000_utterances']} CPU-ms per 1000 utterances"]
    if "augmentation" in r:
        lines += ["", _augment.report(r["augmentation"])]
    lines += [
        "",
        "| padding (% of samples in micro-batches) by bucket_size_multiplier | "
        + " | ".join("1 (random)" if m == 1 else str(m) for m in MULTIPLIERS)
        + " |",
        "|---|" + "---|" * len(MULTIPLIERS),
    ]
    for k, v in r["padding_percent"].items():
        lines.append(f"| {k} | " + " | ".join(str(v[str(m)]) for m in MULTIPLIERS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
