"""--torch_compile against eager on this machine: one rank, a few optimizer steps per architecture, the compile
time stated.

    flock /tmp/xlsr_cpu.lock python bench/compile_speed.py                     # tiny and xlsr-53, 1 rank
    python bench/compile_speed.py --archs tiny --steps 20

For each architecture, xlsr_dist's trainer (bench/_xlsr_rank.py's step taps, nothing patched) trains --steps steps
of global batch 8 eagerly, then the same with --torch_compile (DeepSpeed's engine.compile(), inductor): first step
(the compilation happens there and in later steps that meet a new shape), median of the steps after --warmup,
and the graphs compiled (torch_compile_graphs / torch_compile_recompilations / torch_compile_new_shapes from the
run's metrics.jsonl). Every step's loss is logged, and with both modes run the largest relative difference of the
compiled run's losses from eager's is printed and checked against --loss_rtol (exit 1 beyond it): e.g.
`--archs tiny --steps 100` is the 100-step numerics check. The corpus is the bench corpus of bench/train_speed.py
(demo for tiny, uniform 1-1.5 s for xlsr-53 on CPU); SpecAugment 0.05 and a frozen feature encoder as there. A cold
inductor cache (first run on a machine) compiles much slower than a warm one: the run says which it had only as the
measured time; run it twice to see both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

import _corpus  # noqa: E402
import _launch  # noqa: E402
import _stats  # noqa: E402
from _record import RECORD_ENV  # noqa: E402

from xlsr_dist.tracking import read_metrics_jsonl  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="tiny,xlsr-53", help="comma-separated: tiny, xlsr-53")
    p.add_argument("--steps", type=int, default=0, help="steps per run (default 20 tiny, 4 xlsr-53)")
    p.add_argument("--warmup", type=int, default=-1, help="first steps left out of the median (default 10 / 2)")
    p.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    p.add_argument(
        "--loss_rtol",
        type=float,
        default=1e-5,
        help="largest relative difference of compiled vs eager per-step losses accepted (fp32 rounding; default 1e-5)",
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (default 1)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run before it is killed")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_speed"))
    return p.parse_args(argv)


def command(arch: str, train: Path, evaluation: Path, steps: int, out: Path, compiled: bool) -> list[str]:
    return [
        str(BENCH / "_xlsr_rank.py"),
        *("--architecture", arch, "--train_data", str(train), "--eval_data", str(evaluation)),
        *("--deepspeed", str(ROOT / "ds_configs" / "zero2_fp32.json"), "--max_steps", str(steps)),
        *("--learning_rate", "1e-4", "--warmup_steps", "2", "--seed", "42", "--global_batch_size", "8"),
        *("--mask_time_prob", "0.05", "--freeze_feature_encoder", "true", "--logging_steps", "1"),
        *("--eval_steps", str(10**9), "--save_steps", str(10**9), "--save_total_limit", "1"),
        *("--eval_max_utterances", "8", "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(out)),
        *("--torch_compile", "true" if compiled else "false"),
    ]


def one(arch: str, compiled: bool, dirs: tuple[Path, Path], args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps or (20 if arch == "tiny" else 4)
    warmup = args.warmup if args.warmup >= 0 else (10 if arch == "tiny" else 2)
    run_dir = Path(args.out) / f"{arch}-{'compiled' if compiled else 'eager'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = run_dir / "train_out"
    env = {RECORD_ENV: str(run_dir / "rank{rank}.json")}
    started = time.perf_counter()
    cmd = command(arch, dirs[0], dirs[1], steps, out, compiled)
    try:
        _launch.run_ranks(cmd, 1, run_dir, args.timeout, args.threads, env, ROOT)
    except _launch.RunFailed:
        # A rank writes its record after its last step; gloo's teardown can still abort it (exit -6) afterwards.
        if not (run_dir / "rank0.json").exists():
            raise
        print(f"  {run_dir.name}: steps recorded, then the process failed (see rank0.log)", file=sys.stderr)
    record = json.loads((run_dir / "rank0.json").read_text())
    times = _stats.intervals(record["boundaries"])
    logged = read_metrics_jsonl(out / "metrics.jsonl")
    metrics = {k: v[max(v)] for k, v in logged.items() if k.startswith("torch_compile") and v}
    losses = {int(s): float(v) for s, v in logged.get("loss", {}).items()}
    shutil.rmtree(out, ignore_errors=True)
    return {
        "arch": arch,
        "mode": "compiled" if compiled else "eager",
        "steps": steps,
        "warmup": warmup,
        "first_step_s": times[0],
        "median_step_s": _stats.median(times[warmup:]),
        "wall_s": time.perf_counter() - started,
        "graphs": metrics.get("torch_compile_graphs"),
        "recompilations": metrics.get("torch_compile_recompilations"),
        "new_shapes": metrics.get("torch_compile_new_shapes"),
        "losses": losses,
    }


def loss_difference(eager: dict[int, float], compiled: dict[int, float]) -> float:
    """The largest relative difference of the per-step training losses (every step logged) of two runs."""
    steps = sorted(eager)
    if not steps or sorted(compiled) != steps:
        raise SystemExit(f"logged loss steps differ: eager {steps[:5]}..., compiled {sorted(compiled)[:5]}...")
    return max(abs(compiled[s] - eager[s]) / abs(eager[s]) for s in steps)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    failed = False
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        spec = _corpus.parse_corpus("demo" if arch == "tiny" else "uniform:1-1.5", 640)
        dirs = _corpus.ensure(spec)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            rows.append(one(arch, mode == "compiled", dirs, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
        by_mode = {r["mode"]: r["losses"] for r in rows if r["arch"] == arch}
        if len(by_mode) == 2:
            rows[-1]["loss_rel_diff"] = loss_difference(by_mode["eager"], by_mode["compiled"])
            worst = rows[-1]["loss_rel_diff"]
            verdict = "within" if worst <= args.loss_rtol else "OVER"
            print(
                f"{arch}: compiled vs eager over {len(by_mode['eager'])} steps, max relative loss difference "
                f"{worst:.3g}, {verdict} the tolerance {args.loss_rtol:g}"
            )
            failed = failed or worst > args.loss_rtol
    lines = [
        "| arch | mode | first step s (compiles) | median step s (after warm-up) | graphs | recompilations "
        "| new shapes | run wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['mode']} | {r['first_step_s']:.2f} | {r['median_step_s']:.3f} "
            f"| {r['graphs'] if r['graphs'] is not None else '-'} "
            f"| {r['recompilations'] if r['recompilations'] is not None else '-'} "
            f"| {r['new_shapes'] if r['new_shapes'] is not None else '-'} | {r['wall_s']:.0f} |"
        )
    report = "\n".join(lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(report + "\n")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
