"""Shared by the resume tests: real training runs on N ranks and an output dir cut back to a mid-run checkpoint."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests._dist import run_ranks
from tests._runs import tiny_flags

STEPS = 8
SAVE_AT = 4


@dataclass(frozen=True)
class Reference:
    out: Path
    db: Path
    losses: dict[int, float]


def train(out: Path, db: Path, world_size: int, logs: Path, **flags: str) -> str:
    results = run_ranks(
        ["-m", "xlsr_dist.train", *tiny_flags(out, f"sqlite:///{db}", **flags)],
        world_size=world_size,
        timeout=600,
        log_dir=logs,
    )
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} failed:\n" + "\n".join(r.output.splitlines()[-40:])
    return results[0].output


def stopped_copy(run: Reference, dest: Path, save_at: int = SAVE_AT) -> tuple[Path, Path]:
    """An output dir (and its MLflow store) as if the run had stopped right after the step-``save_at`` checkpoint."""
    out, db = dest / "out", dest / "mlflow.db"
    shutil.copytree(run.out, out)
    shutil.copy(run.db, db)
    for later in (out / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > save_at:
            shutil.rmtree(later)
    shutil.rmtree(out / "final")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in rows if json.loads(line).get("step", 0) <= save_at]  # marker rows have no step
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return out, db
