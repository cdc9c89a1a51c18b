"""Training speed, xlsr_dist against HF Trainer + DeepSpeed, side by side on one machine.

    flock /tmp/xlsr_cpu.lock python bench/train_speed.py    # CPU: tiny model at 1 and 2 ranks, fp32 (~7-10 min)
    python bench/train_speed.py --profile                   # CUDA machine: XLSR-53 (random weights), fp16 ZeRO-2,
                                                            # 1 GPU and all GPUs, + xlsr_dist's step breakdown

For each case (architecture x ranks) it alternates runs of (a) xlsr_dist (`python -m xlsr_dist.train`'s main, see
bench/_xlsr_rank.py) and (b) bench/hf_baseline.py (run_speech_recognition_ctc.py's Trainer path, with the random
sampler of TrainingArguments and with group_by_length), a b c, c b a, a b c; both sides started the same way (one
process per rank with RANK/WORLD_SIZE set) with the same model constructor and seed, DeepSpeed JSON, shards, global
batch 8 (same micro-batch x accumulation x ranks), learning rate and linear warm-up. Each run trains --steps
optimizer steps; the first --warmup are left out (start-up, allocator and JIT warm-up) and the rest give: median step
time, data wait (boundary -> the step's batches in hand), audio seconds per second (real audio of all ranks over the
measured wall time), utterances/s, padding fraction (padding / all samples the model ran on), peak memory per rank
(RSS over the training steps on CPU, torch.cuda.max_memory_allocated on GPU) and, on CPU, process CPU time per step
(all ranks and their DataLoader workers), which other users' load inflates far less than wall time; then the
ratios xlsr_dist / baseline. Every run is checked to train 8 distinct utterances per step, each rank its own share.

Which comparison answers which question:
  - xlsr_dist (as users run it: audio decoded during training, in a background thread) vs the baseline (its .map
    decoded the corpus before its first step, then reads from its cache): the step time each user sees.
  - xlsr_dist "decoded up front" (bench/_xlsr_rank.py fills a cache of decoded audio during the excluded first
    step) vs the baseline: the training step alone, the same work in both measured windows -- which loop is faster.
  - the decode costs, reported on their own beside the tables: the baseline's .map per utterance (uncached run; a
    corpus too big for its cache pays it every epoch) and xlsr_dist's read + decode per utterance.
--no_predecoded leaves the decoded-up-front side out.
--ablation 'LABEL=FLAGS' adds one more xlsr_dist side run with FLAGS added (e.g. 'memory returned=--retain_freed_memory
false'): one change measured side by side with the default and the baseline, alternating with them.
--profile adds one synchronised xlsr_dist run per case splitting the step into data wait, forward, backward,
optimizer step, the stop/non-finite vote and DeepSpeed's collectives (never used for the comparison).
Results: stdout (markdown) and bench/results/train_speed/<date>/results.{json,md} (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

import _corpus  # noqa: E402
import _launch  # noqa: E402
import _stats  # noqa: E402
from _record import PREDECODED_ENV, PROFILE_ENV, RECORD_ENV  # noqa: E402

GLOBAL_BATCH = 8
SIDES = ("xlsr_dist", "hf")
SIDE_NAMES = {"xlsr_dist": "xlsr_dist", "hf": "HF Trainer+DS"}
# xlsr_dist's modes (the sampler slot of a side key): "random" = as users run it, decoding during training;
# "predecoded" = its training audio decoded up front (bench/_xlsr_rank.py), as the baseline's .map does.
PREDECODED = "predecoded"
# xlsr_dist with --ablation's flags added.
ABLATION = "ablation"


def default_cases(device: str, gpus: int) -> str:
    if device == "cuda":
        return "xlsr-53:1" + (f",xlsr-53:{gpus}" if gpus > 1 and GLOBAL_BATCH % gpus == 0 else "")
    return "tiny:1,tiny:2"


def parse_cases(text: str) -> list[tuple[str, int]]:
    """'tiny:1,tiny:2,xlsr-53:1' -> [(architecture, ranks)]; raises ValueError naming --cases."""
    cases = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        arch, _, ranks = part.partition(":")
        if arch not in ("tiny", "xlsr-53") or not ranks.isdigit() or int(ranks) < 1:
            raise ValueError(f"--cases {part!r}: expected ARCH:RANKS with ARCH tiny or xlsr-53, e.g. tiny:2")
        if GLOBAL_BATCH % int(ranks):
            raise ValueError(f"--cases {part!r}: {ranks} ranks cannot split the global batch {GLOBAL_BATCH}")
        cases.append((arch, int(ranks)))
    if not cases:
        raise ValueError("--cases: empty")
    return cases


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/train_speed.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available, else cpu"
    )
    p.add_argument(
        "--cases", default="", help="ARCH:RANKS,... (default: cpu tiny:1,tiny:2; cuda xlsr-53:1[,xlsr-53:N])"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps per run (default: 55 tiny, 60 xlsr-53 on cuda, 4 xlsr-53 on cpu: 50 measured)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=-1,
        help="first steps of each run left out (default: 5 tiny, 10 "
        "xlsr-53 on cuda (fp16 loss-scale search skips steps), 1 xlsr-53 on cpu)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per side and case, alternating (default 3)")
    p.add_argument(
        "--deepspeed",
        default="",
        help="DeepSpeed JSON for both sides (default: ds_configs/zero2_fp16.json on cuda, zero2_fp32.json on cpu)",
    )
    p.add_argument(
        "--corpus",
        default="",
        help="'demo' or 'uniform:LO-HI' seconds (default: demo for tiny, "
        "uniform:4-6 for xlsr-53 on cuda, uniform:1-1.5 for xlsr-53 on cpu)",
    )
    p.add_argument(
        "--utterances",
        type=int,
        default=640,
        help="training utterances in the corpus (default 640: 80 steps, so a run stays within one epoch)",
    )
    p.add_argument("--data_cache", default="", help=f"where corpora are generated (default: {_corpus.cache_root()})")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--lr_warmup_steps", type=int, default=10, help="linear warm-up steps of the schedule")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--baseline_sampler",
        default="both",
        choices=["random", "group_by_length", "both"],
        help="the baseline's TrainingArguments.train_sampling_strategy: random is TrainingArguments' "
        "default, group_by_length what the example's README commands pass (default: both)",
    )
    p.add_argument(
        "--no_predecoded",
        action="store_true",
        help="leave out the xlsr_dist side with its audio decoded up front (decode cost reported on its own)",
    )
    p.add_argument(
        "--ablation",
        default="",
        help="'LABEL=FLAGS': one more xlsr_dist side with FLAGS added, e.g. "
        "'memory returned=--retain_freed_memory false'",
    )
    p.add_argument("--xlsr_args", default="", help="extra flags for xlsr_dist, e.g. '--dataloader_num_workers 0'")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank (default 1)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also one xlsr_dist run per case with the step split into data wait, forward, backward, "
        "optimizer, vote and communication (synchronised; not used for the comparison)",
    )
    p.add_argument("--peak_tflops", type=float, default=0.0, help="the card's 16-bit peak (default: by name)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it is killed")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed"))
    p.add_argument("--keep_outputs", action="store_true", help="keep each run's checkpoints and model")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the first runs and exit")
    args = p.parse_args(argv)
    problems = []
    if args.steps < 0 or (args.steps and args.steps < 3):
        problems.append("--steps: need at least 3 (one warm-up step and two measured ones)")
    if args.repeats < 1:
        problems.append("--repeats: must be >= 1")
    if args.threads < 1:
        problems.append("--threads: must be >= 1")
    if args.ablation and "=" not in args.ablation:
        problems.append("--ablation: expected LABEL=FLAGS, e.g. 'memory returned=--retain_freed_memory false'")
    if problems:
        p.error("; ".join(problems))
    return args


def ablation_of(args: argparse.Namespace) -> tuple[str, list[str]]:
    """--ablation 'LABEL=FLAGS' -> (LABEL, FLAGS split); ('', []) without one."""
    label, _, flags = args.ablation.partition("=")
    return label.strip(), flags.split()


def resolve_device(choice: str) -> tuple[str, int]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "cuda" and gpus == 0:
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = "cuda" if choice == "cuda" or (choice == "auto" and gpus > 0) else "cpu"
    return device, gpus


def case_settings(args: argparse.Namespace, arch: str, device: str) -> dict[str, Any]:
    """Steps, warm-up and corpus of one case (flags win over the per-size defaults)."""
    big_on_cpu = arch == "xlsr-53" and device == "cpu"
    # 50 measured steps: a whole number of the baseline's group_by_length megabatches (50 micro-batches each, sorted
    # longest first: 50 global steps at 1 rank, 25 at 2, ...), so every side is measured on a representative mix of
    # utterance lengths, not on the long head of a megabatch.
    steps = args.steps or (55 if arch == "tiny" else 4 if big_on_cpu else 60)
    warmup = args.warmup if args.warmup >= 0 else (5 if arch == "tiny" else 1 if big_on_cpu else 10)
    if warmup >= steps - 1:
        raise SystemExit(f"--warmup {warmup}: leaves fewer than 2 measured steps of --steps {steps}")
    corpus = args.corpus or ("demo" if arch == "tiny" else "uniform:1-1.5" if big_on_cpu else "uniform:4-6")
    # The corpus must hold every step of a run in one epoch (an epoch boundary restarts data loaders on both sides).
    n = max(args.utterances, GLOBAL_BATCH * (steps + 2))
    return {"steps": steps, "warmup": warmup, "corpus": _corpus.parse_corpus(corpus, n)}


def side_command(
    side: str,
    arch: str,
    world: int,
    settings: dict[str, Any],
    args: argparse.Namespace,
    train_dir: Path,
    eval_dir: Path,
    ds_path: str,
    out_dir: Path,
    sampler: str,
    cache_dir: Path,
    device: str,
) -> list[str]:
    from xlsr_dist.config import plan_batches

    plan = plan_batches(GLOBAL_BATCH, world)
    steps = settings["steps"]
    common_model = ["--mask_time_prob", "0.05", "--freeze_feature_encoder", "true"]
    if side == "xlsr_dist":
        return [
            str(BENCH / "_xlsr_rank.py"),
            "--architecture",
            arch,
            "--train_data",
            str(train_dir),
            "--eval_data",
            str(eval_dir),
            "--deepspeed",
            ds_path,
            "--max_steps",
            str(steps),
            "--learning_rate",
            str(args.learning_rate),
            "--warmup_steps",
            str(args.lr_warmup_steps),
            "--seed",
            str(args.seed),
            "--global_batch_size",
            str(GLOBAL_BATCH),
            "--per_device_train_batch_size",
            str(plan.micro_batch),
            # Both sides log once, at the end; eval and checkpoints only after the last step (untimed).
            "--logging_steps",
            str(steps),
            "--eval_steps",
            str(10**9),
            "--save_steps",
            str(10**9),
            "--save_total_limit",
            "1",
            "--eval_max_utterances",
            "8",
            "--per_device_eval_batch_size",
            "8",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--output_dir",
            str(out_dir),
            *common_model,
            *args.xlsr_args.split(),
            *(ablation_of(args)[1] if sampler == ABLATION else []),
        ]
    cmd = [
        str(BENCH / "hf_baseline.py"),
        "--architecture",
        arch,
        "--train_data",
        str(train_dir),
        "--deepspeed",
        ds_path,
        "--per_device_train_batch_size",
        str(plan.micro_batch),
        "--gradient_accumulation_steps",
        str(plan.grad_accum),
        "--max_steps",
        str(steps),
        "--learning_rate",
        str(args.learning_rate),
        "--warmup_steps",
        str(args.lr_warmup_steps),
        "--seed",
        str(args.seed),
        "--train_sampling_strategy",
        sampler,
        "--output_dir",
        str(out_dir),
        "--cache_dir",
        str(cache_dir),
        *common_model,
    ]
    if device == "cpu":
        cmd.append("--use_cpu")
    return cmd


def flops_function(arch: str, train_dir: Path) -> Any:
    from xlsr_dist import text
    from xlsr_dist.data import shards
    from xlsr_dist.model import tiny_config, xlsr53_config

    meta = shards.read_metadata(shards.list_shards(str(train_dir)))
    vocab = text.build_vocab(text.normalize(t) for t in meta.column("text").to_pylist())
    cfg = (tiny_config if arch == "tiny" else xlsr53_config)(vocab_size=len(vocab))

    def fn(batch: int, samples: int) -> float:
        return _stats.wav2vec2_train_flops(cfg, batch, samples, frozen_feature_encoder=True)

    return fn


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("torch", "transformers", "deepspeed", "accelerate", "datasets"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "missing"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu"] = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
            platform.processor(),
        )
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    if device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def run_and_collect(
    cmd: list[str], world: int, run_dir: Path, timeout_s: float, threads: int, env: dict[str, str]
) -> list[dict[str, Any]]:
    """Run the ranks and read their records, each with its rank's ``exit_code``. A rank writes its record only after
    its last measured step, so a run whose every rank wrote one counts even if a rank then died (gloo's teardown can
    abort a finished rank: "terminate called without an active exception", exit -6); other failures raise."""
    try:
        outcomes = _launch.run_ranks(cmd, world, run_dir, timeout_s, threads, env, ROOT)
    except _launch.RunFailed as exc:
        if not all((run_dir / f"rank{o.rank}.json").exists() for o in exc.outcomes):
            raise
        outcomes = exc.outcomes
    records = []
    for o in outcomes:
        record = json.loads((run_dir / f"rank{o.rank}.json").read_text())
        record["exit_code"] = o.returncode
        records.append(record)
    return records


def after_steps_exits(records: list[dict[str, Any]]) -> str:
    """'' when every rank exited 0, else e.g. 'rank 1 exit -6' (a crash or kill after the recorded steps)."""
    return ", ".join(f"rank {r['rank']} exit {r['exit_code']}" for r in records if r.get("exit_code") not in (0, None))


def one_run(
    side: str,
    case: str,
    arch: str,
    world: int,
    rep: int,
    settings: dict[str, Any],
    args: argparse.Namespace,
    dirs: tuple[Path, Path],
    ds_path: str,
    run_root: Path,
    sampler: str,
    device: str,
    profile: bool = False,
) -> list[dict[str, Any]]:
    mode = sampler if side == "hf" or sampler in (PREDECODED, ABLATION) else ""
    tag = f"{side}{'-' + mode if mode else ''}{'-profile' if profile else ''}-{rep}"
    run_dir = run_root / case.replace(":", "x") / tag
    if run_dir.exists():
        shutil.rmtree(run_dir)
    out_dir = run_dir / "train_out"
    cmd = side_command(
        side,
        arch,
        world,
        settings,
        args,
        dirs[0],
        dirs[1],
        ds_path,
        out_dir,
        sampler,
        Path(args.out) / "hf_cache",
        device,
    )
    env = {RECORD_ENV: str(run_dir / "rank{rank}.json")}
    if profile:
        env[PROFILE_ENV] = "1"
    if side == "xlsr_dist" and sampler == PREDECODED:
        env[PREDECODED_ENV] = "1"
    if args.dry_run:
        print(f"[{case} {tag}] {world} x: python {' '.join(cmd)}")
        return []
    started = time.perf_counter()
    records = run_and_collect(cmd, world, run_dir, args.timeout, args.threads, env)
    ends = after_steps_exits(records)
    if ends:
        print(f"  {case} {tag}: measured steps recorded, then {ends} (reported, not fatal)", file=sys.stderr)
    if not args.keep_outputs:
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"  {case} {tag}: {time.perf_counter() - started:.0f} s wall", file=sys.stderr, flush=True)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device, gpus = resolve_device(args.device)
    try:
        cases = parse_cases(args.cases or default_cases(device, gpus))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if device == "cuda" and any(w > gpus for _, w in cases):
        raise SystemExit(f"--cases: {gpus} GPU(s) visible; a case asks for more ranks")
    if (
        device == "cpu"
        and any(w > 1 for _, w in cases)
        and args.threads * max(w for _, w in cases) > (os.cpu_count() or 1)
    ):
        print(
            f"note: {max(w for _, w in cases)} ranks x {args.threads} thread(s) on {os.cpu_count()} cores",
            file=sys.stderr,
        )
    precision_default = "fp16" if device == "cuda" else "fp32"
    ds_path = args.deepspeed or str(ROOT / "ds_configs" / f"zero2_{precision_default}.json")
    ds = json.loads(Path(ds_path).read_text())
    precision = (
        "fp16"
        if ds.get("fp16", {}).get("enabled") is True
        else ("bf16" if ds.get("bf16", {}).get("enabled") is True else "fp32")
    )
    samplers = ["random", "group_by_length"] if args.baseline_sampler == "both" else [args.baseline_sampler]

    # A fresh datasets cache per invocation: the first baseline run of each corpus pays for the example's .map
    # preprocessing (reported, never timed as steps), the later ones load it, as re-runs of the example do.
    shutil.rmtree(Path(args.out) / "hf_cache", ignore_errors=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_root = Path(args.out) / stamp
    env_info = environment(device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python bench/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env_info,
        "device": device,
        "precision": precision,
        "deepspeed": str(Path(ds_path).resolve().relative_to(ROOT))
        if Path(ds_path).resolve().is_relative_to(ROOT)
        else ds_path,
        "load_before": load_before,
        "cases": [],
    }
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for arch, world in cases:
        case = f"{arch}:{world}"
        settings = case_settings(args, arch, device)
        dirs = _corpus.ensure(settings["corpus"], Path(args.data_cache) if args.data_cache else None)
        flops_fn = flops_function(arch, dirs[0])
        print(
            f"{case}: {settings['corpus'].describe()}; {settings['steps']} steps/run, first "
            f"{settings['warmup']} left out; {args.repeats} run(s) per side",
            file=sys.stderr,
            flush=True,
        )
        sides = [("xlsr_dist", "random")] + ([] if args.no_predecoded else [("xlsr_dist", PREDECODED)])
        sides += [("xlsr_dist", ABLATION)] if args.ablation else []
        sides += [("hf", s) for s in samplers]
        raw: dict[str, list[list[dict[str, Any]]]] = {f"{s}:{m}": [] for s, m in sides}
        for rep in range(args.repeats):
            # a b c, c b a, a b c ...: a load that drifts during the case weighs on every side alike.
            for side, sampler in sides if rep % 2 == 0 else sides[::-1]:
                try:
                    raw[f"{side}:{sampler}"].append(
                        one_run(side, case, arch, world, rep, settings, args, dirs, ds_path, run_root, sampler, device)
                    )
                except _launch.RunFailed as exc:
                    raise SystemExit(f"{case} {side} ({sampler}) run {rep}: {exc}") from exc
        profile_summary = None
        if args.profile:
            recs = one_run(
                "xlsr_dist",
                case,
                arch,
                world,
                0,
                settings,
                args,
                dirs,
                ds_path,
                run_root,
                "random",
                device,
                profile=True,
            )
            if recs:
                profile_summary = _stats.summarize_run(recs, settings["warmup"], GLOBAL_BATCH, flops_fn)
        if args.dry_run:
            continue
        case_out: dict[str, Any] = {
            "case": case,
            "architecture": arch,
            "ranks": world,
            "corpus": settings["corpus"].describe(),
            "steps": settings["steps"],
            "warmup": settings["warmup"],
            "sides": {},
        }
        summaries: dict[str, dict[str, Any]] = {}
        for key, runs in raw.items():
            per_run = [_stats.summarize_run(r, settings["warmup"], GLOBAL_BATCH, flops_fn) for r in runs]
            problems = sorted({p for r in per_run for p in r["split_problems"]})
            if problems:
                raise SystemExit(
                    f"{case} {key}: the ranks did not split the global batch as required:\n  "
                    + "\n  ".join(problems[:10])
                )
            summary = _stats.summarize_side(per_run, world)
            summaries[key] = summary
            side, sampler = key.split(":")
            label = SIDE_NAMES[side] + (f" ({sampler})" if side == "hf" and len(samplers) > 1 else "")
            label += xlsr_mode_label(sampler, args)
            rows.append({"case": case, "side": label, "summary": summary})
            case_out["sides"][key] = {"summary": summary, "runs": per_run}
        mine = [("", "xlsr_dist:random")] + (
            [] if args.no_predecoded else [(" decoded up front", "xlsr_dist:" + PREDECODED)]
        )
        mine += [(f" {ablation_of(args)[0]}", "xlsr_dist:" + ABLATION)] if args.ablation else []
        case_ratios = [
            _stats.ratio_line(
                case + label + (f" vs {sampler}" if len(samplers) > 1 else ""),
                summaries[key],
                summaries[f"hf:{sampler}"],
            )
            for label, key in mine
            for sampler in samplers
        ]
        ratios += case_ratios
        case_out["ratios"] = case_ratios
        if profile_summary is not None:
            case_out["profile"] = profile_summary
        if device == "cuda":
            name = env_info["gpus"][0]
            peak = args.peak_tflops or _stats.peak_tflops(name, precision)
            case_out["peak_tflops"] = peak
        results["cases"].append(case_out)
    if args.dry_run:
        return 0
    results["load_after"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - started
    results["ablation"] = args.ablation
    report = render(results, rows, ratios)
    print(report)
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (run_root / "results.md").write_text(report + "\n")
    print(f"\n(results: {run_root}/results.{{json,md}})", file=sys.stderr)
    return 0


def xlsr_mode_label(sampler: str, args: argparse.Namespace) -> str:
    """How an xlsr_dist side is named in the tables: '', ' (decoded up front)' or ' (LABEL)' of --ablation."""
    if sampler == PREDECODED:
        return " (decoded up front)"
    if sampler == ABLATION:
        return f" ({ablation_of(args)[0]})"
    return ""


def decode_costs(case: dict[str, Any]) -> list[str]:
    """The data preparation each side pays outside its measured steps: the baseline's .map (uncached run), and
    xlsr_dist's decoding measured on its own (the predecoded side's up-front fill), per utterance and per step."""
    out = []
    sides = case["sides"]
    pre = [side["summary"] for key, side in sides.items() if key.startswith("hf")]
    pre_s = [s["preprocess_s_max"] for s in pre if s.get("preprocess_s_max") is not None]
    per_utt = [s["preprocess_ms_per_utterance"] for s in pre if s.get("preprocess_ms_per_utterance") is not None]
    if pre_s:
        per = (
            f" = {max(per_utt):.2f} ms per utterance, {GLOBAL_BATCH * max(per_utt):.1f} ms per step" if per_utt else ""
        )
        out.append(
            f"the baseline's .map preprocessing (decode + feature extractor + tokenizer, before its first step; "
            f"uncached in the first run) took up to {max(pre_s):.1f} s{per}: paid again each epoch by a corpus "
            f"that does not fit its cache"
        )
    mine = sides.get("xlsr_dist:" + PREDECODED, {}).get("summary", {})
    if mine.get("decode_ms_per_utterance") is not None:
        ms = mine["decode_ms_per_utterance"]
        out.append(
            f"xlsr_dist's own decoding (read + FLAC decode, timed up front on the decoded-up-front side): {ms:.2f} ms "
            f"per utterance, {GLOBAL_BATCH * ms:.1f} ms per step; on its default side it runs in a background "
            f"thread during the measured steps (in its CPU s/step)"
        )
    return out


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def render(results: dict[str, Any], rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    env = results["environment"]
    machine = ", ".join(env.get("gpus", [])) or f"{env['cpu']} ({env['cores']} cores)"
    lines = [
        f"## {machine} -- {env['date']}",
        "",
        f"`{results['command']}`; {results['device']}, {results['precision']}, {results['deepspeed']}; torch "
        f"{env['torch']}, transformers {env['transformers']}, deepspeed {env['deepspeed']}, accelerate "
        f"{env['accelerate']}, datasets {env['datasets']}; load average before/after "
        f"{results['load_before'][0]:.2f}/{results['load_after'][0]:.2f}; {results['wall_s'] / 60:.1f} min.",
        "",
        _stats.table(rows, cpu=results["device"] == "cpu"),
        "",
        _stats.ratio_table(ratios, cpu=results["device"] == "cpu"),
    ]
    for case in results["cases"]:
        extra = []
        for key, side in case["sides"].items():
            s = side["summary"]
            name = SIDE_NAMES[key.split(":")[0]] + xlsr_mode_label(
                key.split(":")[1], argparse.Namespace(ablation=results.get("ablation", ""))
            )
            flops = ""
            if s.get("tflops_per_device") is not None:
                peak = case.get("peak_tflops")
                frac = f" = {s['tflops_per_device'] / peak:.1%} of the card's {peak:g}" if peak else ""
                flops = (
                    f"{s['tflops_per_device']:.1f} TFLOP/s per GPU{frac}"
                    if results["device"] == "cuda"
                    else f"{s['tflops_per_device'] * 1e3:.1f} GFLOP/s per rank"
                ) + ", "
            extra.append(
                f"{name}: {flops}{s['audio_hours_per_device_hour']:.1f} audio-h per "
                f"{'GPU' if results['device'] == 'cuda' else 'rank'}-h, start-up "
                f"{_fmt_s(s.get('startup_s'))} (excluded), run medians "
                f"{', '.join(f'{m:.3f}' for m in s['run_medians_s'])} s"
            )
        extra += decode_costs(case)
        if extra:
            lines += [
                "",
                f"{case['case']} ({case['corpus']}, {case['steps']} steps/run, first {case['warmup']} "
                f"left out): " + "; ".join(extra),
            ]
        prof = case.get("profile", {}).get("profile") if case.get("profile") else None
        if prof:
            step = case["profile"]["median_step_s"]
            named = sum(prof.get(k, 0.0) for k in ("data", "forward", "backward", "optimizer", "vote"))
            parts = ", ".join(
                f"{k} {prof.get(k, 0.0) * 1e3:.1f}" for k in ("data", "forward", "backward", "optimizer", "vote")
            )
            lines += [
                "",
                f"{case['case']} xlsr_dist step breakdown (--profile, synchronised, ms, median per step): "
                f"{parts}, other {max(0.0, step - named) * 1e3:.1f} (CTC loss, copies, bookkeeping); step "
                f"{step * 1e3:.1f}; DeepSpeed collectives {prof.get('comm', 0.0) * 1e3:.1f} ms in "
                f"{prof.get('comm_ops', 0.0):.0f} ops (inside backward/optimizer)",
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
