"""`make gpu-check`: the real recipe's precisions on the GPUs of this machine, xlsr_dist and HF Trainer + DeepSpeed
side by side, in a few minutes.

For each of ds_configs/zero2_fp16.json, zero2_amp.json and zero2_bf16.json: the XLSR-53 architecture (random weights,
no download) trains --steps optimizer steps of global batch 8 on all visible GPUs (the largest count that divides 8)
on a synthetic corpus of 4-6 s utterances, once through xlsr_dist's trainer (bench/_gpu_check_rank.py: the trainer's
main with bench/_xlsr_rank.py's timing taps and a loss-scale tap on the DeepSpeed engine) and once through
bench/hf_baseline.py (run_speech_recognition_ctc.py's Trainer path with the same JSON). Reported per run: audio hours
per GPU hour over the steps after --warmup, peak GPU memory (torch.cuda.max_memory_allocated, largest rank), and for
xlsr_dist the loss-scale history and skipped steps. The HF side of zero2_amp runs DeepSpeed's own torch_autocast
path, which xlsr_dist repairs (ds_configs/README.md): its figures are for speed and memory only.

Eager vs compiled: xlsr_dist also runs each config with --torch_compile (side "xlsr_dist compiled"; its warm-up
steps hold the compilation), so the first GPU run says whether to turn it on. MFU: model FLOPs of the unpadded
micro-batches (bench/_stats.py's wav2vec2 count, frozen feature encoder) per second and GPU over the card's dense
16-bit peak (fp16/AMP/bf16 alike: the tensor cores' rate). Untested on a GPU so far: only --dry_run has run (CPU,
where the compiled side is left out unless --sides names it: compiling takes minutes there).

    make gpu-check                               # on a CUDA machine (wheels from .whl/, see `make gpu-wheels`)
    python bench/gpu_check.py --dry_run          # CPU: tiny model, 2 steps, fp32 in place of fp16; checks the path
    python bench/gpu_check.py --dry_run --jobs 2 # the same, two runs at a time (tests/test_gpu_check.py)

Results: stdout (markdown) and --out/results.{json,md} (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

import _corpus  # noqa: E402
import _launch  # noqa: E402
import _stats  # noqa: E402
from _gpu_check_rank import PRECISION_ENV  # noqa: E402
from _record import RECORD_ENV  # noqa: E402
from train_speed import flops_function  # noqa: E402

GLOBAL_BATCH = 8
GPU_CONFIGS = ("zero2_fp16", "zero2_amp", "zero2_bf16")
# On CPU (--dry_run) DeepSpeed has no fp16 wrap: fp32 stands in for it; autocast fp16 and bf16 run as themselves.
CPU_STAND_INS = {"zero2_fp16": "zero2_fp32", "zero2_amp": "zero2_amp", "zero2_bf16": "zero2_bf16"}
GiB = 1024**3
SIDES = ("xlsr_dist", "xlsr_dist compiled", "hf")
DRY_SIDES = ("xlsr_dist", "hf")
# The card's 16-bit peak applies to each config: AMP's matmuls run in fp16 too.
PEAK_PRECISION = {"zero2_fp16": "fp16", "zero2_amp": "fp16", "zero2_bf16": "bf16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry_run", action="store_true", help="CPU: tiny model, 1 rank, 2 steps per run")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps per run (default 60; 2 with --dry_run)")
    p.add_argument("--warmup", type=int, default=-1, help="first steps left out of the speed (default 10; 0 dry)")
    p.add_argument("--configs", default=",".join(GPU_CONFIGS), help="ds_configs names, comma-separated")
    p.add_argument(
        "--sides",
        default="",
        help=f"comma-separated, of {', '.join(SIDES)} (default: all; {', '.join(DRY_SIDES)} with --dry_run)",
    )
    p.add_argument("--gpus", type=int, default=0, help="ranks (default: all visible GPUs that divide 8)")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--data_cache", default="", help=f"where the corpus is generated (default {_corpus.cache_root()})")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it is killed")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --dry_run: runs at a time (default 1); their speeds then share the cores and mean nothing",
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check"))
    args = p.parse_args(argv)
    args.sides = [x.strip() for x in args.sides.split(",") if x.strip()] or list(DRY_SIDES if args.dry_run else SIDES)
    unknown = [x for x in args.sides if x not in SIDES]
    if unknown:
        p.error(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    # On GPUs every run takes all of them: concurrent runs would measure each other.
    if args.jobs < 1 or (args.jobs > 1 and not args.dry_run):
        p.error("--jobs: a positive count, above 1 only with --dry_run")
    return args


def world_size(requested: int, dry_run: bool) -> int:
    import torch

    if dry_run:
        return 1
    visible = torch.cuda.device_count()
    if visible == 0:
        raise SystemExit("gpu-check: no CUDA GPU is visible (use --dry_run on a CPU machine)")
    fits = [n for n in range(1, min(visible, GLOBAL_BATCH) + 1) if GLOBAL_BATCH % n == 0]
    return requested if requested in fits else fits[-1]


def check_configs(names: list[str], dry_run: bool) -> list[str]:
    """Every named config exists and has a consistent precision block; the paths to run (CPU stand-ins when dry)."""
    from xlsr_dist import precision

    problems, paths = [], []
    for name in names:
        path = ROOT / "ds_configs" / f"{name}.json"
        if not path.is_file():
            problems.append(f"--configs: {path} not found")
            continue
        problems += precision.problems(json.loads(path.read_text()))
        run_name = CPU_STAND_INS.get(name, name) if dry_run else name
        paths.append(str(ROOT / "ds_configs" / f"{run_name}.json"))
    if problems:
        raise SystemExit("gpu-check: " + "; ".join(problems))
    return paths


def xlsr_command(arch: str, train: Path, evaluation: Path, ds: str, steps: int, lr: float, out: Path) -> list[str]:
    warmup_steps = str(min(10, steps // 2))
    return [
        str(BENCH / "_gpu_check_rank.py"),
        *("--architecture", arch, "--train_data", str(train), "--eval_data", str(evaluation), "--deepspeed", ds),
        *("--max_steps", str(steps), "--learning_rate", str(lr), "--warmup_steps", warmup_steps, "--seed", "42"),
        *("--global_batch_size", str(GLOBAL_BATCH), "--mask_time_prob", "0.05", "--freeze_feature_encoder", "true"),
        # One log, after the last step (_xlsr_rank.py takes its last boundary there); eval and the checkpoint only
        # after it, untimed; no tracking server.
        *("--logging_steps", str(steps), "--eval_steps", str(10**9), "--save_steps", str(10**9)),
        *("--save_total_limit", "1", "--eval_max_utterances", "8", "--per_device_eval_batch_size", "8"),
        *("--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(out)),
    ]


def hf_command(arch: str, train: Path, ds: str, steps: int, lr: float, world: int, out: Path, cpu: bool) -> list[str]:
    from xlsr_dist.config import plan_batches

    plan = plan_batches(GLOBAL_BATCH, world)
    cmd = [
        str(BENCH / "hf_baseline.py"),
        *("--architecture", arch, "--train_data", str(train), "--deepspeed", ds),
        *("--per_device_train_batch_size", str(plan.micro_batch)),
        *("--gradient_accumulation_steps", str(plan.grad_accum)),
        *("--max_steps", str(steps), "--learning_rate", str(lr), "--warmup_steps", str(min(10, steps // 2))),
        *("--seed", "42", "--mask_time_prob", "0.05", "--freeze_feature_encoder", "true"),
        *("--output_dir", str(out), "--cache_dir", str(out.parent / "hf_cache")),
    ]
    return cmd + (["--use_cpu"] if cpu else [])


def run_side(side: str, cmd: list[str], world: int, run_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {RECORD_ENV: str(run_dir / "record{rank}.json"), PRECISION_ENV: str(run_dir / "precision{rank}.json")}
    started = time.perf_counter()
    # Dry runs share this machine's cores: --jobs runs of 2 // jobs threads each.
    threads = max(1, 2 // args.jobs) if args.dry_run else 4
    _launch.run_ranks(cmd, world, run_dir, args.timeout, threads=threads, extra_env=env, cwd=ROOT)
    print(f"  {side}: {time.perf_counter() - started:.0f} s", flush=True)
    return [json.loads((run_dir / f"record{r}.json").read_text()) for r in range(world)]


def history_line(history: list[dict[str, Any]]) -> str:
    """'65536 x3, 32768 x57': the loss scale after each step, run-length encoded."""
    runs: list[list[Any]] = []
    for entry in history:
        scale = entry["loss_scale"]
        if runs and runs[-1][0] == scale:
            runs[-1][1] += 1
        else:
            runs.append([scale, 1])
    return ", ".join(f"{scale:g} x{count}" for scale, count in runs) or "-"


def summarize(
    side: str,
    config: str,
    records: list[dict[str, Any]],
    run_dir: Path,
    world: int,
    warmup: int,
    flops_fn: Any = None,
) -> dict:
    summary = _stats.summarize_run(records, warmup, GLOBAL_BATCH, flops_fn)
    peaks = [m for m in summary["cuda_max_allocated"] if m] or [m for m in summary["peak_rss_steps"] if m]
    row: dict[str, Any] = {
        "config": config,
        "side": side,
        "gpus": world,
        "device": summary["device_name"],
        "audio_hours_per_gpu_hour": summary["audio_s_per_s"] / world,
        "median_step_s": summary["median_step_s"],
        "peak_memory_gib": max(peaks) / GiB if peaks else None,
        "split_problems": summary["split_problems"],
    }
    tflops = summary["flops"] / summary["wall_s"] / world / 1e12 if summary["wall_s"] > 0 else None
    peak = _stats.peak_tflops(summary["device_name"], PEAK_PRECISION.get(config, "fp32"))
    row["tflops_per_gpu"] = tflops
    row["mfu"] = tflops / peak if tflops is not None and peak else None
    precision_files = sorted(run_dir.glob("precision*.json"))
    if side.startswith("xlsr_dist") and precision_files:
        history = json.loads(precision_files[0].read_text())
        row["loss_scale_history"] = history
        row["loss_scale"] = history_line(history)
        row["skipped_steps"] = history[-1]["skipped_steps"] if history else None
    return row


def render(rows: list[dict[str, Any]], steps: int, warmup: int) -> str:
    lines = [
        f"{rows[0]['gpus']} x {rows[0]['device']}, global batch {GLOBAL_BATCH}, {steps} steps ({warmup} left out "
        "of the speed)",
        "",
        "| config | side | audio h / GPU h | median step s | TFLOP/s per GPU | MFU | peak GPU memory GiB "
        "| skipped steps | loss scale per step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        skipped = r.get("skipped_steps")
        tflops = f"{r['tflops_per_gpu']:.2f}" if r.get("tflops_per_gpu") is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['config']} | {r['side']} | {r['audio_hours_per_gpu_hour']:.0f} | {r['median_step_s']:.3f} "
            f"| {tflops} | {mfu} | {peak} | {skipped if skipped is not None else '-'} | {r.get('loss_scale', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.steps or (2 if args.dry_run else 60)
    warmup = args.warmup if args.warmup >= 0 else (0 if args.dry_run else 10)
    if warmup >= steps:
        raise SystemExit(f"--warmup {warmup} leaves no measured step of --steps {steps}")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    paths = check_configs(names, args.dry_run)
    world = world_size(args.gpus, args.dry_run)
    arch = "tiny" if args.dry_run else "xlsr-53"
    corpus = _corpus.parse_corpus("uniform:1-1.5" if args.dry_run else "uniform:4-6", GLOBAL_BATCH * (steps + 2))
    data_root = Path(args.data_cache) if args.data_cache else None
    train, evaluation = _corpus.ensure(corpus, data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flops_fn = flops_function(arch, train)

    def run(name: str, ds: str, side: str) -> dict[str, Any]:
        run_dir = out / name / side.replace(" ", "_")
        shutil.rmtree(run_dir, ignore_errors=True)
        if side.startswith("xlsr_dist"):
            cmd = xlsr_command(arch, train, evaluation, ds, steps, args.learning_rate, run_dir / "output")
            cmd += ["--torch_compile", "true"] if side.endswith("compiled") else []
        else:
            cmd = hf_command(arch, train, ds, steps, args.learning_rate, world, run_dir / "output", args.dry_run)
        records = run_side(f"{name} ({Path(ds).name}) {side}", cmd, world, run_dir, args)
        row = summarize(side, name, records, run_dir, world, warmup, flops_fn)
        # Checkpoints of a 315M-parameter model are GBs each; nothing here reads them.
        shutil.rmtree(run_dir / "output", ignore_errors=True)
        return row

    jobs = [(name, ds, side) for name, ds in zip(names, paths) for side in args.sides]
    print(f"{len(jobs)} runs on {world} rank(s), {args.jobs} at a time:", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # map keeps the table in config, side order whatever order the runs finish in.
        rows = list(pool.map(lambda job: run(*job), jobs))
    report = render(rows, steps, warmup)
    (out / "results.json").write_text(json.dumps({"steps": steps, "warmup": warmup, "rows": rows}, indent=1))
    (out / "results.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
