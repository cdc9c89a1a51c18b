"""Does noise augmentation make the model robust to noise it never heard? The demo recipe (launch/demo.yaml, one
rank, --steps optimizer steps) is trained (a) without augmentation and (b) with --noise_prob on a TRAINING noise
set; both are scored (`xlsr_dist.evaluate`) on the demo's clean held-out speakers and on a NOISY copy of them made
with a disjoint EVAL noise set at a per-utterance SNR drawn uniformly in [--snr_min, --snr_max] dB.

    flock /tmp/xlsr_cpu.lock .venv/bin/python bench/augment_effect.py [--steps 400] [--noise_prob 0.5] [--seeds 42]

The two noise sets share nothing: training noise is bench/_augment.py's 4 synthetic pink-ish noises (stationary,
coloured); eval noise is babble, 5 overlapping streams of demo utterances of another corpus seed (9999, whose
speakers and sentences are not the training corpus's). The table goes to stdout and bench/results/augment_effect.md
(git-ignored); run outputs to bench/results/augment_effect/.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _augment import make_folders  # noqa: E402

from xlsr_dist.audio import SAMPLE_RATE, decode_bytes, encode_flac  # noqa: E402
from xlsr_dist.data import demo, shards  # noqa: E402

BABBLE_SEED = 9999  # another demo corpus seed: speakers and sentences unlike the training corpus's
BABBLE_STREAMS = 5


def _run(args: list[str], log: Path) -> float:
    """Run one `python -m ...` command, its output to log; seconds taken. A failure stops the benchmark."""
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call([sys.executable, "-m", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"augment_effect: {args[0]} failed with status {code}; see {log}")
    return time.perf_counter() - start


def babble(seconds: float) -> np.ndarray:
    """BABBLE_STREAMS streams of back-to-back demo utterances (corpus seed BABBLE_SEED) summed, unit peak."""
    voices = demo.speakers(BABBLE_SEED, "eval")
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, dtype=np.float64)
    index = 0
    for _ in range(BABBLE_STREAMS):
        pos = 0
        while pos < n:
            wave = decode_bytes(demo.utterance(BABBLE_SEED, "eval", index, voices)["audio"])
            index += 1
            take = min(len(wave), n - pos)
            out[pos : pos + take] += wave[:take]
            pos += take
    return (out / np.abs(out).max()).astype(np.float32)


def noisy_copy(clean: Path, out: Path, snr_min: float, snr_max: float, seed: int = 0) -> None:
    """Every utterance of the clean split plus a random babble segment at a uniform SNR in [snr_min, snr_max]."""
    rng = np.random.default_rng(seed)
    noise = babble(60.0)
    out.mkdir(parents=True)
    paths = shards.list_shards(str(clean))
    for k, path in enumerate(paths):
        table = shards.read_metadata([path])
        rows = shards.read_rows(path, range(table.num_rows))
        noisy = []
        for row in rows:
            wave = decode_bytes(row["audio"])
            start = int(rng.integers(0, len(noise) - len(wave)))
            seg = noise[start : start + len(wave)].astype(np.float64)
            snr = rng.uniform(snr_min, snr_max)
            gain = np.sqrt(np.mean(wave.astype(np.float64) ** 2) / (np.mean(seg**2) * 10 ** (snr / 10)))
            mixed = (wave + gain * seg).astype(np.float32)
            noisy.append({**row, "audio": encode_flac(mixed), "source": f"noisy-babble:snr={snr:.1f}:{row['id']}"})
        shards.write_shard(out / shards.shard_name(k, len(paths)), noisy)
    shards.write_manifest(out, extra={"noisy_copy": {"of": str(clean), "snr_db": [snr_min, snr_max]}})


def train(out: Path, steps: int, seed: int, noise: dict[str, str]) -> float:
    """The demo recipe on one rank for `steps` steps with the given augmentation flags; seconds taken."""
    args = ["xlsr_dist.train", "--config", "launch/demo.yaml", "--max_steps", str(steps), "--eval_steps", str(steps)]
    args += ["--save_steps", str(steps), "--seed", str(seed), "--report_to", "none", "--output_dir", str(out)]
    for flag, value in noise.items():
        args += [f"--{flag}", value]
    return _run(args, out.parent / f"{out.name}.log")


def score(run: Path, sets: dict[str, Path]) -> dict[str, dict[str, float]]:
    """{set: metrics} of the run's final model on each set (xlsr_dist.evaluate, one rank)."""
    out = run.parent / f"{run.name}_eval"
    args = ["xlsr_dist.evaluate", "--model", str(run), "--data", *map(str, sets.values())]
    args += ["--names", *sets, "--output_dir", str(out), "--no_mlflow", "--batch_size", "16"]
    _run(args, run.parent / f"{run.name}_eval.log")
    return {name: json.loads((out / name / "report.json").read_text())["metrics"] for name in sets}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--noise_prob", type=float, default=0.5, help="training arm's --noise_prob")
    p.add_argument("--train_snr", type=float, nargs=2, default=[5.0, 20.0], help="training arm's SNR range, dB")
    p.add_argument("--snr_min", type=float, default=5.0, help="noisy eval copy's lowest SNR, dB")
    p.add_argument("--snr_max", type=float, default=10.0, help="noisy eval copy's highest SNR, dB")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/augment_effect")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    _, clean = demo.ensure_demo_corpus(demo.default_cache_dir(), 42, 2000, 200)
    noisy = a.out / f"noisy_eval_{a.snr_min:g}-{a.snr_max:g}dB"
    if not (noisy / shards.MANIFEST).is_file():
        noisy_copy(clean, noisy, a.snr_min, a.snr_max)
    folders = a.out / "train_noise"
    if not folders.is_dir():
        make_folders(folders)
    arms = {
        "no augmentation": {},
        f"noise p={a.noise_prob:g}, {a.train_snr[0]:g}-{a.train_snr[1]:g} dB": {
            "noise_dir": str(folders / "noise"),
            "noise_prob": str(a.noise_prob),
            "noise_snr_min_db": str(a.train_snr[0]),
            "noise_snr_max_db": str(a.train_snr[1]),
        },
    }
    lines = [
        "| training | seed | clean WER | clean CER | noisy WER | noisy CER | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in a.seeds:
        for i, (name, flags) in enumerate(arms.items()):
            run = a.out / f"arm{i}_seed{seed}"
            secs = train(run, a.steps, seed, flags)
            m = score(run, {"clean": clean, "noisy": noisy})
            print(f"{name} seed {seed}: {m} in {secs:.0f} s", flush=True)
            c, n = m["clean"], m["noisy"]
            lines.append(
                f"| {name} | {seed} | {c['wer']:.4f} | {c['cer']:.4f} | {n['wer']:.4f} | {n['cer']:.4f} | {secs:.0f} |"
            )
    head = (
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.processor() or platform.machine()}), "
        f"python {' '.join(sys.argv)}\n\nlaunch/demo.yaml on 1 rank, {a.steps} steps; eval: the demo's 200 held-out "
        f"utterances (held-out speakers), clean and with babble (corpus seed {BABBLE_SEED}, never in training) at "
        f"{a.snr_min:g}-{a.snr_max:g} dB SNR; training noise: bench/_augment.py's synthetic pink-ish noises\n\n"
    )
    text = head + "\n".join(lines) + "\n"
    (a.out.parent / "augment_effect.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
