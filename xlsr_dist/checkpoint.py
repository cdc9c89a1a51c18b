"""Checkpoints: saved by every rank together, complete only once marked, rotated, resumed exactly.

Layout under --output_dir:
    model_config/                  config.json + processor (vocab, feature extractor), written once by rank 0
    checkpoints/step-0000500/      DeepSpeed's files (one optimizer partition per rank) + COMPLETE.json
    final/                         save_pretrained model + processor at the end of training
    best/                          the same, from the best checkpoint's weights (xlsr_dist.best_checkpoint)

A checkpoint counts only when COMPLETE.json exists: rank 0 writes it (atomically) after every rank has returned from
save_checkpoint and passed a barrier. A save killed half way therefore never becomes the one resume picks, and the
previous one is only rotated away after the new one is complete. Assumes --output_dir is on a filesystem every node
sees (as DeepSpeed's own checkpointing does).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from xlsr_dist import atomic
from xlsr_dist.world import World, barrier

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "model_config"
FINAL = "final"
MARKER = "COMPLETE.json"
PREFIX = "step-"
# In a model directory the run writes from a checkpoint (best/): which step its weights come from.
MODEL_INFO = "xlsr_dist_model.json"


# Test hook (tests/test_faults.py): every rank sleeps this many seconds between DeepSpeed's files and the marker,
# so a test can kill a rank inside a save deterministically. Never set it in real runs.
SLOW_SAVE_ENV = "XLSR_TEST_SLOW_SAVE_S"


class CheckpointError(RuntimeError):
    pass


def _test_pause() -> None:
    seconds = float(os.environ.get(SLOW_SAVE_ENV, "") or 0)
    if seconds > 0:
        time.sleep(seconds)


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def complete_steps(output_dir: str | Path) -> set[int]:
    return {int(p.name[len(PREFIX) :]) for p in complete_checkpoints(output_dir)}


def newest_complete(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


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


def read_client_state(ckpt: Path) -> dict[str, Any]:
    return dict(json.loads((ckpt / MARKER).read_text()))


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


def _deepspeed_state_classes() -> list[Any]:
    """The classes DeepSpeed 0.19 pickles into a ZeRO-2 checkpoint beside tensors and plain containers (found by
    loading its fp32/bf16/fp16 files with weights_only=True): the loss scaler, the ZeRO stage and the fp32
    partitions' fragment addresses. Each is plain data; unpickling one runs no code of the file's choosing."""
    # Here, not at the top: train.py imports this module before checking its flags, and DeepSpeed takes seconds.
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: Path, mmap: bool = False) -> Any:
    """torch.load that only builds tensors, plain containers and DeepSpeed's own state classes: a file whose pickle
    would construct anything else (run code) is refused with CheckpointError before anything of it runs.
    ``mmap``: map the tensors instead of reading them (a check that costs only the pickle)."""
    try:
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        what = f"it would call {named.group(1)}" if named else " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and DeepSpeed's training state, which could run "
            f"code when loaded ({what}). Use a checkpoint written by xlsr_dist training."
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({str(exc).splitlines()[0]})") from None


def verify_loadable(ckpt: Path) -> None:
    """Every DeepSpeed file of ``ckpt`` passes safe_load: DeepSpeed's own loader (weights_only=False) reads them
    only after this."""
    files = sorted(ckpt.glob("*.pt"))
    if not files:
        raise CheckpointError(f"{ckpt}: no DeepSpeed *.pt files (not a DeepSpeed checkpoint)")
    for path in files:
        safe_load(path, mmap=True)


def load(engine: Any, ckpt: Path) -> dict[str, Any]:
    """Collective: restores model, optimizer, scheduler and loss scaler; returns the saved client state."""
    verify_loadable(ckpt)
    loaded, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt}")
    return read_client_state(ckpt)


def _module_state(ckpt: Path) -> dict[str, torch.Tensor]:
    files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"{ckpt}: no mp_rank_*_model_states.pt (not a DeepSpeed checkpoint)")
    state = safe_load(files[0])
    return {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}


def load_hf_model(path: str | Path) -> tuple[Any, Any]:
    """(Wav2Vec2ForCTC in fp32, Wav2Vec2Processor) from a save_pretrained dir, a run's --output_dir (final/, else
    its newest complete checkpoint) or one checkpoint directory."""
    # Here, not at the top: train.py imports this module before checking its flags, and transformers takes seconds.
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

    p = Path(path)
    if (p / "config.json").is_file() and not (p / MARKER).is_file():
        return Wav2Vec2ForCTC.from_pretrained(p), Wav2Vec2Processor.from_pretrained(p)
    if (p / FINAL / "config.json").is_file():
        return load_hf_model(p / FINAL)
    ckpt = newest_complete(p) if (p / CHECKPOINTS).is_dir() else p
    if ckpt is None or not (ckpt / MARKER).is_file():
        raise CheckpointError(f"{path}: neither a saved model, a run output dir, nor a complete checkpoint")
    base = ckpt.parent.parent / MODEL_CONFIG
    model = Wav2Vec2ForCTC(Wav2Vec2Config.from_pretrained(base))
    model.load_state_dict(_module_state(ckpt))
    return model.eval(), Wav2Vec2Processor.from_pretrained(base)


def save_model_from(ckpt: Path, dest: Path, info: dict[str, Any]) -> None:
    """The checkpoint's weights (fp32) + processor as a transformers model at ``dest``, replacing what is there, with
    ``info`` (its step, ...) in MODEL_INFO. A reader sees the old directory, none, or the whole new one."""
    model, processor = load_hf_model(ckpt)
    shutil.rmtree(dest, ignore_errors=True)
    with atomic.replacing_dir(dest) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        atomic.write_json(tmp / MODEL_INFO, info)


def model_step(model_dir: Path) -> int | None:
    """The training step a model directory's weights come from, when the run recorded it (MODEL_INFO)."""
    try:
        return int(json.loads((model_dir / MODEL_INFO).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
