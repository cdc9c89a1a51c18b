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

import io
import json
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
from xlsr_dist.state_files import CheckpointError, safe_load
from xlsr_dist.training import elastic
from xlsr_dist.world import World, barrier

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "model_config"
FINAL = "final"
MARKER = "COMPLETE.json"
PREFIX = "step-"
# In a model directory the run writes from a checkpoint (best/): which step its weights come from.
MODEL_INFO = "xlsr_dist_model.json"
RNG_STATE = "rng_state"

log = logging.getLogger(__name__)


# Test hook (tests/test_faults.py): every rank sleeps this many seconds between DeepSpeed's files and the marker,
# so a test can kill a rank inside a save deterministically. Never set it in real runs.
SLOW_SAVE_ENV = "XLSR_TEST_SLOW_SAVE_S"


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


def _module_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights in fp32. Under fp16/bf16 the module holds 16-bit copies of the weights (fp16 keeps
    11 significant bits, bf16 8): the trained parameters are then taken from the fp32 master partitions every rank's
    optimizer file holds, exactly the weights training updated; frozen ones and buffers, never updated, from the
    module."""
    files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"{ckpt}: no mp_rank_*_model_states.pt (not a DeepSpeed checkpoint)")
    state = safe_load(files[0])
    module = {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}
    if all(v.dtype == torch.float32 for k, v in state["module"].items() if v.is_floating_point()):
        return module
    module.update(_fp32_masters(ckpt, state["param_shapes"]))
    return module


def _fp32_masters(ckpt: Path, param_shapes: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The trained parameters from a ZeRO-1/2 checkpoint's fp32 partitions: each parameter group's flat fp32 vector
    is the ranks' partitions end to end, parameters in ``param_shapes`` order, each followed by its alignment
    padding (DeepSpeed's zero_to_fp32 layout, read here with safe_load instead of its unrestricted torch.load)."""
    # DeepSpeed prefixes the files with bf16_ under bf16 (elastic.zero_partitions knows its names).
    files = [path for _, path in sorted(elastic.zero_partitions(ckpt).items())]
    states = [safe_load(f, mmap=True)["optimizer_state_dict"] for f in files]
    if not states or int(max(_as_list(states[0]["partition_count"]))) != len(states):
        raise CheckpointError(f"{ckpt}: expected one *_optim_states.pt per rank, found {len(states)}")
    paddings = states[0].get("param_alignment_paddings")
    masters: dict[str, torch.Tensor] = {}
    for group, shapes in enumerate(param_shapes):
        flat = torch.cat([s["single_partition_of_fp32_groups"][group] for s in states])
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = int(torch.Size(shape).numel())
            masters[name] = flat.narrow(0, offset, numel).view(torch.Size(shape)).detach().clone()
            offset += numel + (int(paddings[group][index]) if paddings is not None else 0)
        if offset > flat.numel():
            raise CheckpointError(f"{ckpt}: its fp32 partitions hold {flat.numel()} values, the model {offset}")
    return masters


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_hf_model(path: str | Path) -> tuple[Any, Any]:
    """(Wav2Vec2ForCTC in fp32, Wav2Vec2Processor) from a save_pretrained dir, a run's --output_dir (final/, else
    its newest complete checkpoint) or one checkpoint directory."""
    # Here, not at the top: train.py imports this module before checking its flags, and transformers takes seconds.
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

    p = Path(path)
    if (p / "config.json").is_file() and not (p / MARKER).is_file():
        # fp32 whatever the files hold: transformers 5 would otherwise load a 16-bit model as 16-bit (dtype "auto"),
        # which fp32 audio input cannot run through ("Input type (float) and bias type (c10::Half)").
        model = Wav2Vec2ForCTC.from_pretrained(p, dtype=torch.float32)
        return model, Wav2Vec2Processor.from_pretrained(p)
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
