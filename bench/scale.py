"""What xlsr_dist costs as the corpus grows: prepare, per-rank training start-up, and the data path, on synthetic
corpora of 10k to 1M utterances.

    flock /tmp/xlsr_cpu.lock python bench/scale.py                       # --sizes 10000,100000,1000000 --worlds 1,8
    python bench/scale.py --sizes 200,400 --worlds 1,2 --steps 2 --no_warmup  # a smoke run (tests/test_bench_smoke.py)

The audio is tiny (0.2-0.5 s clips, a pool of --pool distinct ones): what scales here is the metadata, one row per
utterance, as in Common Voice (~1.7M utterances) with tiny clips. For each size it
  1. writes a NeMo-style JSON-lines manifest (train: the size; eval: 16 utterances) whose rows name clips of the
     pool, with distinct ids and short transcripts (the input layout `--layout nemo` reads; no million files);
  2. runs `python -m xlsr_dist.prepare` on it in a subprocess: wall time, and peak RSS of the largest process of
     its tree (each process's VmHWM, sampled every 0.25 s: the main process or a decoding worker) and of the
     whole tree (summed RSS, sampled);
  3. for each world size, trains --steps steps of the tiny model with one OS process per rank (as srun or
     bench/train_speed.py start them; bench/_scale_rank.py): per rank, wall and CPU seconds from process creation
     to the first step, its RSS/USS/PSS then, and the pages of the node's catalog it maps (the world-size-8 runs
     share this machine's cores: CPU seconds is the per-rank cost, wall seconds what this machine's cores
     allowed); one untimed run comes first;
  4. in this process, as rank 0 of 8 (micro-batch 1, no process group, so it builds the catalog itself): the data
     stream's construction (CPU seconds and RSS growth: the catalog a node holds, which its ranks map) and its
     steady state over --stream_steps steps in audio seconds per CPU second, against the decode floor of the same
     clips (soundfile on the FLAC bytes, nothing else). With clips this short the per-utterance overhead dominates
     both; bench/data_path.py measures the same on Common-Voice-like durations.
Results: a markdown table on stdout and bench/results/scale/<date>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

import _launch  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import soundfile as sf  # noqa: E402
from _corpus import speech_like  # noqa: E402
from _scale_rank import RECORD_ENV  # noqa: E402

from xlsr_dist.audio import SAMPLE_RATE  # noqa: E402
from xlsr_dist.data import demo, shards  # noqa: E402

EVAL_UTTERANCES = 16
CLIP_S = (0.2, 0.5)
# prepare skips transcripts denser than 25 characters per second: words of up to 4 letters fit a 0.2 s clip.
SHORT_WORDS = tuple(w for w in demo.WORDS if len(w) <= 4)


def parse_sizes(text: str, flag: str) -> list[int]:
    try:
        values = [int(float(p)) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected positive integers separated by commas")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/scale.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", default="10000,100000,1000000", help="training utterances per corpus, e.g. 10000,1e6")
    p.add_argument("--worlds", default="1,8", help="world sizes of the start-up runs (each must divide 8)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per start-up run (default 3)")
    p.add_argument("--stream_steps", type=int, default=2000, help="steps of rank 0 of 8 in the data-path part")
    p.add_argument("--pool", type=int, default=64, help="distinct audio clips the utterances point to")
    p.add_argument("--prepare_args", default="", help="extra flags for xlsr_dist.prepare, e.g. '--num_workers 1'")
    p.add_argument("--work", default="", help="where corpora and shards go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep --work's corpora and shards")
    p.add_argument(
        "--reuse_shards",
        action="store_true",
        help="with --work: train from the shards a --keep run left there, not preparing again (no prepare figures)",
    )
    p.add_argument(
        "--no_warmup",
        action="store_true",
        help="leave out the untimed first training run (smoke runs, whose start-up figures nobody compares)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per prepare or training run")
    p.add_argument("--out", default=str(BENCH / "results" / "scale"), help="where the JSON goes")
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.sizes, "--sizes")
        args.worlds = parse_sizes(args.worlds, "--worlds")
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    problems = [f"--worlds: {w} ranks cannot split the global batch 8" for w in args.worlds if 8 % w]
    if args.steps < 1 or args.stream_steps < 1 or args.pool < 1:
        problems.append("--steps/--stream_steps/--pool: must be >= 1")
    if args.reuse_shards and not args.work:
        problems.append("--reuse_shards: needs --work, the directory a --keep run left its shards in")
    if problems:
        p.error("; ".join(problems))
    return args


def write_input(root: Path, n: int, pool: int, seed: int = 0) -> Path:
    """A NeMo manifest corpus: root/audio/<k>.wav clips and root/{train,eval}.jsonl naming them."""
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    durations = []
    for k in range(pool):
        seconds = float(rng.uniform(*CLIP_S))
        wave = speech_like(seconds, rng)
        sf.write(audio / f"{k}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        durations.append(wave.shape[0] / SAMPLE_RATE)
    for split, count in (("train", n), ("eval", EVAL_UTTERANCES)):
        clips = rng.integers(pool, size=count)
        words = rng.integers(len(SHORT_WORDS), size=count)
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            # One write per 10k lines: a million json.dumps calls are the slow part, not the disk.
            for start in range(0, count, 10000):
                f.write(
                    "".join(
                        f'{{"id": "{split}-{i:08d}", "audio_filepath": "audio/{clips[i]}.wav", '
                        f'"text": "{SHORT_WORDS[words[i]]}"}}\n'
                        for i in range(start, min(count, start + 10000))
                    )
                )
    return root


def tree_rss_mb(process: psutil.Process) -> tuple[float, float]:
    """(summed RSS of the tree now, the largest VmHWM -- peak RSS since exec -- among its processes), MB."""
    total, largest = 0, 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            status = Path(f"/proc/{p.pid}/status").read_text()
        except (psutil.Error, OSError):
            continue
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
        largest = max(largest, int(match.group(1)) * 1024 if match else 0)
    return total / 2**20, largest / 2**20


def run_prepare(corpus: Path, output: Path, extra: Sequence[str], timeout_s: float, log: Path) -> dict[str, Any]:
    """`python -m xlsr_dist.prepare` in a subprocess: wall seconds, peak RSS (largest process; tree sampled)."""
    cmd = [sys.executable, "-m", "xlsr_dist.prepare", "--layout", "nemo", "--input", str(corpus)]
    cmd += ["--output", str(output), "--split", "train", "eval", "--no_progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        tree_peak, largest_peak = [0.0], [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                try:
                    tree, largest = tree_rss_mb(watched)
                    tree_peak[0], largest_peak[0] = max(tree_peak[0], tree), max(largest_peak[0], largest)
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.monotonic() + timeout_s
        status = 0
        while time.monotonic() < deadline:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        else:
            proc.kill()
            _, status, _ = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"prepare exited {code} after {wall:.0f} s ({log}):\n{tail}")
    train_dir = output / "train"
    files = shards.list_shards(str(train_dir))
    return {
        "wall_s": wall,
        # Linux: the peak RSS of the child or of the largest descendant it waited for (a decoding worker).
        # Not wait4's ru_maxrss: Popen starts the child with vfork, and exec records the parent's (this benchmark's)
        # peak as the child's, so it grew with what this process had measured before. VmHWM is per process image.
        "peak_rss_mb": largest_peak[0] or None,
        "tree_peak_rss_mb": tree_peak[0] or None,
        "shards": len(files),
        "shard_mb": sum(os.path.getsize(f) for f in files) / 1e6,
        "rows": shards.read_metadata(files).num_rows,
    }


def run_startup(shards_root: Path, world: int, steps: int, timeout_s: float, run_dir: Path) -> list[dict[str, Any]]:
    """--steps steps of the tiny model on ``world`` ranks; each rank's first-step record."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [str(BENCH / "_scale_rank.py"), "--architecture", "tiny"]
    cmd += ["--train_data", str(shards_root / "train"), "--eval_data", str(shards_root / "eval")]
    cmd += ["--deepspeed", str(ROOT / "ds_configs" / "zero2_fp32.json"), "--max_steps", str(steps)]
    cmd += ["--warmup_steps", "0", "--global_batch_size", "8", "--report_to", "none"]
    cmd += ["--eval_steps", str(10**6), "--save_steps", str(10**6), "--logging_steps", str(10**6)]
    cmd += ["--output_dir", str(run_dir / "out"), "--mask_time_prob", "0", "--freeze_feature_encoder", "false"]
    env = {RECORD_ENV: str(run_dir / "rank{rank}.json")}
    _launch.run_ranks(cmd, world, run_dir, timeout_s, 1, env, ROOT)
    records = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(world)]
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    return records


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure_stream(shards_root: Path, steps: int) -> dict[str, Any]:
    """Rank 0 of 8, in this process: the stream's construction and its steady state against the decode floor."""
    import pyarrow.parquet as pq
    import torch

    from xlsr_dist.config import DataConfig, plan_batches
    from xlsr_dist.data.stream import TrainStream
    from xlsr_dist.text import build_vocab
    from xlsr_dist.world import World

    torch.set_num_threads(1)
    location = str(shards_root / "train")
    vocab = build_vocab(SHORT_WORDS)
    shards.clear_cache()
    rss0, cpu0 = current_rss_mb(), time.process_time()
    stream = TrainStream(
        location,
        World(rank=0, world_size=8),
        plan_batches(8, 8),
        42,
        vocab,
        DataConfig(dataloader_num_workers=0),
        lambda samples: samples // 320,
    )
    built_cpu, built_rss = time.process_time() - cpu0, current_rss_mb() - rss0
    c = stream.catalog
    arrays = (c.ids.data, c.ids.offsets, c.durations, c.shard, c.row, c.label_flat, c.label_offsets)
    catalog_mb = sum(a.nbytes for a in (*arrays, c.blob_offset, c.blob_length)) / 2**20
    steps = min(steps, stream.steps_per_epoch)
    generator = stream.steps(stream.initial_state())
    next(generator)  # the first step opens files and fills caches: not steady state
    audio, cpu0 = 0.0, time.process_time()
    for _ in range(steps - 1):
        _, micro = next(generator)
        audio += sum(b["audio_seconds"] for b in micro)
    stream_cpu = time.process_time() - cpu0
    generator.close()
    # As many clips as the stream decoded, read beforehand: a floor over a handful of clips is a few milliseconds of
    # CPU, too short to time.
    blobs: list[bytes] = []
    for batch in pq.ParquetFile(shards.list_shards(location)[0]).iter_batches(batch_size=1024, columns=["audio"]):
        blobs += batch.column("audio").to_pylist()
        if len(blobs) >= steps:
            break
    floor_audio, cpu0 = 0.0, time.process_time()
    for b in blobs:
        wave, sr = sf.read(io.BytesIO(b), dtype="float32")
        floor_audio += wave.shape[0] / sr
    floor_cpu = time.process_time() - cpu0
    per_core = audio / stream_cpu if stream_cpu > 0 else None
    floor = floor_audio / floor_cpu if floor_cpu > 0 else None
    return {
        "construct_cpu_s": built_cpu,
        "construct_rss_mb": built_rss,
        "catalog_mb": catalog_mb,
        "steps": steps - 1,
        "audio_s_per_cpu_s": per_core,
        "floor_audio_s_per_cpu_s": floor,
        "vs_floor": per_core / floor if per_core and floor else None,
    }


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = re.search(r"Model name:\s*(.+)", lscpu)
        cpu = name.group(1).strip() if name else platform.processor()
    except (OSError, subprocess.SubprocessError):
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(results: dict[str, Any]) -> str:
    worlds = results["worlds"]
    lines = [
        f"{results['machine']}; commit {results['commit']}; {results['date']}; `{results['command']}`",
        "",
        "| utterances | prepare (s) | prepare peak RSS, largest process / tree (MB) | shards (MB) | "
        + " | ".join(f"start-up wall / CPU s, world {w} (max rank)" for w in worlds)
        + " | "
        + " | ".join(f"RSS / USS / PSS at step 1, world {w} (max rank, MB)" for w in worlds)
        + f" | catalog per rank, world {worlds[-1]}: mapped / PSS / private (max rank, MB)"
        + " | catalog build, in-process: CPU s / its arrays MB | steady data path vs decode floor |",
        "|" + "---|" * (4 + 2 * len(worlds) + 3),
    ]
    for size in results["sizes"]:
        pre = size.get("prepare") or {}
        cells = [
            f"{size['utterances']:,}",
            _f(pre.get("wall_s"), ".1f"),
            f"{_f(pre.get('peak_rss_mb'), '.0f')} / {_f(pre.get('tree_peak_rss_mb'), '.0f')}",
            _f(pre.get("shard_mb"), ".0f"),
        ]
        for w in worlds:
            ranks = size.get("startup", {}).get(str(w))
            cells.append(
                f"{max(r['startup_s'] for r in ranks):.1f} / {max(r['startup_cpu_s'] for r in ranks):.1f}"
                if ranks
                else size.get("errors", {}).get(f"startup {w}", "-")[:60]
            )
        for w in worlds:
            ranks = size.get("startup", {}).get(str(w))
            cells.append(
                " / ".join(_f(max((r.get(k) or 0) for r in ranks), ".0f") for k in ("rss_mb", "uss_mb", "pss_mb"))
                if ranks
                else "-"
            )
        ranks = size.get("startup", {}).get(str(worlds[-1]))
        keys = ("catalog_rss_mb", "catalog_pss_mb", "catalog_private_mb")
        cells.append(" / ".join(_f(max((r.get(k) or 0) for r in ranks), ".1f") for k in keys) if ranks else "-")
        stream = size.get("stream") or {}
        cells.append(f"{_f(stream.get('construct_cpu_s'), '.2f')} / {_f(stream.get('catalog_mb'), '.1f')}")
        cells.append(f"{_f(stream.get('vs_floor'), '.2f')}x" if stream.get("vs_floor") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"{s['utterances']:,} {k}: {v}" for s in results["sizes"] for k, v in s.get("errors", {}).items()]
    if errors:
        lines += ["", "errors: " + "; ".join(e.splitlines()[0] for e in errors)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="xlsr_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "commit": commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "worlds": args.worlds,
        "sizes": [],
    }
    try:
        for n in args.sizes:
            size: dict[str, Any] = {"utterances": n, "startup": {}, "errors": {}}
            results["sizes"].append(size)
            corpus, prepared = work / f"input-{n}", work / f"shards-{n}"
            if not (args.reuse_shards and (prepared / "train" / shards.MANIFEST).exists()):
                started = time.perf_counter()
                write_input(corpus, n, args.pool)
                size["input_s"] = time.perf_counter() - started
                print(f"{n:,}: input written in {size['input_s']:.1f} s", file=sys.stderr, flush=True)
                try:
                    size["prepare"] = run_prepare(
                        corpus, prepared, args.prepare_args.split(), args.timeout, work / f"prepare-{n}.log"
                    )
                except RuntimeError as exc:
                    size["errors"]["prepare"] = str(exc)
                    print(f"{n:,}: {exc}", file=sys.stderr, flush=True)
                    continue
                print(f"{n:,}: prepare {size['prepare']}", file=sys.stderr, flush=True)
            if n == args.sizes[0] and not args.no_warmup:
                # The first rank process of an invocation waited ~20 s more than later ones, off-CPU (cold caches of
                # the imported libraries): one untimed run so that no size carries it.
                try:
                    run_startup(prepared, 1, 1, args.timeout, work / "train-warmup")
                except _launch.RunFailed as exc:
                    size["errors"]["warm-up"] = str(exc)
            for world in args.worlds:
                try:
                    size["startup"][str(world)] = run_startup(
                        prepared, world, args.steps, args.timeout, work / f"train-{n}-{world}"
                    )
                    print(f"{n:,}: world {world}: {size['startup'][str(world)]}", file=sys.stderr, flush=True)
                except _launch.RunFailed as exc:
                    size["errors"][f"startup {world}"] = str(exc)
                    print(f"{n:,}: world {world}: {exc}", file=sys.stderr, flush=True)
            try:
                size["stream"] = measure_stream(prepared, args.stream_steps)
                print(f"{n:,}: stream {size['stream']}", file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001 -- the stream's API may change under this benchmark: report it
                size["errors"]["stream"] = f"{type(exc).__name__}: {exc}"
            if not args.keep:
                shutil.rmtree(corpus, ignore_errors=True)
                shutil.rmtree(prepared, ignore_errors=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report = render(results)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stamp}.md").write_text(report + "\n")
    print(f"\n(results: {out}/{stamp}.{{json,md}})", file=sys.stderr)
    return 0 if not any(s["errors"] for s in results["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
