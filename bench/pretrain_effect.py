"""Does continued pretraining help fine-tuning? The tiny wav2vec2 is pretrained (wav2vec 2.0's objective,
`xlsr_dist.pretrain`) on the demo corpus's audio without transcripts, then fine-tuned with CTC on a small labelled
subset for the same steps from (a) the pretrained final/ and (b) random weights, each with several seeds; the
held-out demo eval split's CER/WER at the last step are compared.

    flock /tmp/xlsr_cpu.lock .venv/bin/python bench/pretrain_effect.py [--unlabelled 2000] [--pretrain_steps 100] \
        [--labelled 200] [--finetune_steps 300] [--seeds 42 7] [--arms 0 1 2]

One rank per run (no launcher variables: one process). Fine-tuning uses launch/demo.yaml's settings (lr 0.004,
mask_time_prob 0, unfrozen feature encoder, global batch 8, ...) with --max_steps, the labelled
subset (the first --labelled utterances of the demo train split: rows are pure functions of (seed, split, index),
so they are also part of the unlabelled set) and one evaluation at the last step. --ctc_blank_bias is only allowed
for random weights, so three arms: pretrained (new head, bias 0), random with the demo's bias 5, random with bias 0.
Pretraining uses
launch/pretrain_demo.yaml with --max_steps and a --unlabelled-utterance corpus. The table goes to stdout and
bench/results/pretrain_effect.md (git-ignored); run outputs to bench/results/pretrain_effect/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], log: Path) -> float:
    """Run one `python -m ...` command, its output to log; seconds taken. A failure stops the benchmark."""
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call([sys.executable, "-m", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"pretrain_effect: {' '.join(args[:1])} failed with status {code}; see {log}")
    return time.perf_counter() - start


def _last_eval(out: Path) -> dict[str, float]:
    """The last evaluation's eval_cer/eval_wer/eval_loss in the run's metrics.jsonl."""
    last: dict[str, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval_wer" in row:
            last = {k: float(row[k]) for k in ("step", "eval_cer", "eval_wer", "eval_loss")}
    return last


def pretrain(out: Path, unlabelled: int, steps: int) -> float:
    """Pretrain the tiny model on `unlabelled` demo utterances' audio; seconds taken."""
    args = ["xlsr_dist.pretrain", "--config", "launch/pretrain_demo.yaml", "--demo_train_utterances", str(unlabelled)]
    args += ["--max_steps", str(steps), "--save_steps", str(steps), "--output_dir", str(out)]
    return _run(args, out.parent / "pretrain.log")


def finetune(
    out: Path, init: Path | None, labelled: int, steps: int, seed: int, blank_bias: float
) -> tuple[dict[str, float], float]:
    """Fine-tune with CTC from init (None: random weights); the last evaluation and seconds taken."""
    args = ["xlsr_dist.train", "--config", "launch/demo.yaml", "--demo_train_utterances", str(labelled)]
    args += ["--max_steps", str(steps), "--eval_steps", str(steps), "--save_steps", str(steps), "--seed", str(seed)]
    args += ["--ctc_blank_bias", str(blank_bias), "--report_to", "none", "--output_dir", str(out)]
    if init is not None:
        args += ["--model_name_or_path", str(init), "--architecture", ""]
    seconds = _run(args, out.parent / f"{out.name}.log")
    return _last_eval(out), seconds


def _table(rows: list[tuple[str, int, dict[str, float], float]]) -> str:
    lines = ["| init | seed | step | eval CER | eval WER | eval loss | wall s |", "|---|---|---|---|---|---|---|"]
    for name, seed, ev, secs in rows:
        lines.append(
            f"| {name} | {seed} | {int(ev['step'])} | {ev['eval_cer']:.4f} | {ev['eval_wer']:.4f} "
            f"| {ev['eval_loss']:.3f} | {secs:.0f} |"
        )
    for name in dict.fromkeys(r[0] for r in rows):
        evs = [r[2] for r in rows if r[0] == name]
        cer = statistics.mean(e["eval_cer"] for e in evs)
        wer = statistics.mean(e["eval_wer"] for e in evs)
        lines.append(f"| **{name}, mean** | | | {cer:.4f} | {wer:.4f} | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unlabelled", type=int, default=2000, help="demo utterances pretrained on (audio only)")
    p.add_argument("--pretrain_steps", type=int, default=100)
    p.add_argument("--labelled", type=int, default=200, help="labelled demo utterances fine-tuned on")
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    p.add_argument(
        "--arms", type=int, nargs="+", default=[0, 1, 2], help="0 pretrained, 1 random bias 5, 2 random bias 0"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/pretrain_effect")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    pre_secs = pretrain(a.out / "pretrain", a.unlabelled, a.pretrain_steps)
    print(f"pretrained {a.pretrain_steps} steps on {a.unlabelled} utterances in {pre_secs:.0f} s", flush=True)
    # --ctc_blank_bias is refused for a checkpoint (config/validate.py), so the pretrained arm starts its new CTC head
    # at transformers' zero init; random weights are run with the demo's bias 5 and, for a like-for-like head, 0.
    arms: list[tuple[str, Path | None, float]] = [
        ("pretrained, blank bias 0", a.out / "pretrain" / "final", 0.0),
        ("random, blank bias 5 (demo)", None, 5.0),
        ("random, blank bias 0", None, 0.0),
    ]
    arms = [arm for i, arm in enumerate(arms) if i in a.arms]
    rows = []
    for seed in a.seeds:
        for name, init, bias in arms:
            tag = name.split(",")[0].replace(" ", "_") + ("_nobias" if not bias else "")
            ev, secs = finetune(a.out / f"{tag}_seed{seed}", init, a.labelled, a.finetune_steps, seed, bias)
            rows.append((name, seed, ev, secs))
            print(f"{name} seed {seed}: {ev} in {secs:.0f} s", flush=True)
    head = (
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.processor() or platform.machine()}), "
        f"python {' '.join(sys.argv)}\n\npretraining: {a.pretrain_steps} steps on {a.unlabelled} unlabelled demo "
        f"utterances, {pre_secs:.0f} s; fine-tuning: {a.finetune_steps} steps on {a.labelled} labelled utterances, "
        f"eval on the demo's 200 held-out utterances (held-out speakers)\n\n"
    )
    text = head + _table(rows) + "\n"
    (a.out.parent / "pretrain_effect.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
