"""Checkpoints, write side: saved by every rank together, complete only once marked, rotated, resumed exactly.

The layout of --output_dir and everything that reads it (which checkpoint is complete, a checkpoint's fp32 weights)
is xlsr_dist/run_dir.py. A checkpoint counts only when COMPLETE.json exists: rank 0 writes it (atomically) after
every rank has returned from save_checkpoint and passed a barrier. A save killed half way therefore never becomes the
one resume picks, and the previous one is only rotated away after the new one is complete. Assumes --output_dir is
on a filesystem every node sees (as DeepSpeed's own checkpointing does).
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsr_dist import atomic
from xlsr_dist.run_dir import (
    CHECKPOINTS,
    MARKER,
    MODEL_INFO,
    PREFIX,
    complete_checkpoints,
    newest_complete,
    read_client_state,
    tag_for,
)

# Re-exported: the trainer names the run's final model, its model_config/ and the kept steps through this module.
from xlsr_dist.run_dir import FINAL as FINAL
from xlsr_dist.run_dir import MODEL_CONFIG as MODEL_CONFIG
from xlsr_dist.run_dir import complete_steps as complete_steps
from xlsr_dist.state_files import CheckpointError, safe_load
from xlsr_dist.training import elastic
from xlsr_dist.world import World, barrier

RNG_STATE = "rng_state"

log = logging.getLogger(__name__)


# Test hook (tests/test_faults.py): every rank sleeps this many seconds between DeepSpeed's files and the marker,
# so a test can kill a rank inside a save deterministically. Never set it in real runs.
SLOW_SAVE_ENV = "XLSR_TEST_SLOW_SAVE_S"


def _test_pause() -> None:
    seconds = float(os.environ.get(SLOW_SAVE_ENV, "") or 0)
    if seconds > 0:
        time.sleep(seconds)


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """'' -> None; 'latest' -> newest complete checkpoint or None; a path -> that checkpoint, which must be complete."""
    if not spec:
        return None
    if spec == "latest":
        return newest_complete(output_dir)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(
            f"--resume_from_checkpoint {spec}: no such directory; give 'latest' (the newest complete checkpoint in "
            f"--output_dir), a run's --output_dir, or one of its {CHECKPOINTS}/{PREFIX}NNNNNNN directories"
        )
    if (path / CHECKPOINTS).is_dir():
        newest = newest_complete(path)
        if newest is None:
            raise CheckpointError(f"--resume_from_checkpoint {spec}: no complete checkpoint under {path / CHECKPOINTS}")
        return newest
    if not (path / MARKER).is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint (no {MARKER}; an interrupted save?). "
            f"Complete ones: {[p.name for p in complete_checkpoints(path.parent.parent)] or 'none'}"
        )
    return path


def save(
    engine: Any,
    output_dir: str | Path,
    step: int,
    client_state: dict[str, Any],
    keep: int,
    world: World,
    protect: int | None = None,
) -> Path:
    """Collective: every rank must call it at the same step. ``protect``: the step of a checkpoint rotation keeps
    besides the ``keep`` newest (the best one, as HF Trainer keeps it)."""
    root = Path(output_dir) / CHECKPOINTS
    tag = tag_for(step)
    # DeepSpeed's own "latest" file is written before we know every rank finished; resume never reads it.
    engine.save_checkpoint(str(root), tag=tag, client_state={"xlsr_dist": client_state}, save_latest=False)
    save_rng_state(root / tag, world.rank)
    _test_pause()
    barrier()
    path = root / tag
    if world.is_main:
        atomic.write_json(path / MARKER, {"step": step, **client_state})
        rotate(output_dir, keep, protect)
        # Saves interrupted before this one (no marker, older step) can never be resumed from: reclaim their space.
        for stale in root.iterdir():
            if (
                stale.name.startswith(PREFIX)
                and stale.is_dir()
                and not (stale / MARKER).is_file()
                and stale.name[len(PREFIX) :].isdigit()
                and int(stale.name[len(PREFIX) :]) < step
            ):
                shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return path


def rotate(output_dir: str | Path, keep: int, protect: int | None = None) -> None:
    """Remove complete checkpoints beyond the ``keep`` newest (0 keeps all), except step ``protect``."""
    if keep > 0:
        for old in complete_checkpoints(output_dir)[:-keep]:
            if protect is None or old.name != tag_for(protect):
                shutil.rmtree(old, ignore_errors=True)


def verify_loadable(ckpt: Path) -> None:
    """Every DeepSpeed file of ``ckpt`` passes safe_load: DeepSpeed's own loader (weights_only=False) reads them
    only after this."""
    files = sorted(ckpt.glob("*.pt"))
    if not files:
        raise CheckpointError(f"{ckpt}: no DeepSpeed *.pt files (not a DeepSpeed checkpoint)")
    for path in files:
        safe_load(path, mmap=True)


def load(engine: Any, plan: elastic.ResumePlan) -> dict[str, Any]:
    """Collective: restores model, optimizer, scheduler and loss scaler (from the universal form when the world size
    changed, see elastic.py); returns the saved client state."""
    verify_loadable(plan.checkpoint)
    elastic.load(engine, plan)
    if plan.universal:
        log.info(
            "elastic resume: %s saved on %d rank(s), continuing on %d rank(s)",
            plan.checkpoint.name,
            plan.saved_world_size,
            plan.world_size,
        )
    return read_client_state(plan.checkpoint)


def _rng_file(ckpt: Path, rank: int) -> Path:
    # In a folder: elastic.convert hands every top-level *.pt file of the checkpoint to DeepSpeed's converter.
    return ckpt / RNG_STATE / f"rank_{rank:05d}.pt"


def save_rng_state(ckpt: Path, rank: int) -> None:
    """This rank's random streams (python, numpy, torch CPU, CUDA) as plain tensors and numbers, so that loading
    needs nothing beyond ``weights_only=True``."""
    version, mt_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(_rng_file(ckpt, rank), buffer.getvalue())


def restore_rng_state(plan: elastic.ResumePlan, rank: int) -> bool:
    """Collective-free: this rank continues the random streams it had at the save (dropout, HF's SpecAugment draw),
    only when the world size is the one that saved, i.e. the same rank had the same streams. True when restored."""
    path = _rng_file(plan.checkpoint, rank)
    if plan.saved_world_size != plan.world_size or not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(("MT19937", np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


def save_model_from(ckpt: Path, dest: Path, info: dict[str, Any]) -> None:
    """The checkpoint's weights (fp32) + processor as a transformers model at ``dest``, replacing what is there, with
    ``info`` (its step, ...) in MODEL_INFO. A reader sees the old directory, none, or the whole new one."""
    # Here, not at the top: train.py imports this module before checking its flags, and transformers takes seconds.
    from xlsr_dist.model import load_hf_model

    model, processor = load_hf_model(ckpt)
    shutil.rmtree(dest, ignore_errors=True)
    with atomic.replacing_dir(dest) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        atomic.write_json(tmp / MODEL_INFO, info)
