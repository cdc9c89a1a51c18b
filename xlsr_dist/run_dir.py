"""The layout of a training run's --output_dir, read side: where things are, which checkpoint counts, which step a
model directory's weights come from, and a checkpoint's weights in fp32.

    model_config/                  config.json + processor (vocab, feature extractor), written once by rank 0
    checkpoints/step-0000500/      DeepSpeed's files (one optimizer partition per rank) + COMPLETE.json
    final/                         save_pretrained model + processor at the end of training
    best/                          the same, from the best checkpoint's weights (training/best_checkpoint.py)
    train_config.json, run_info.json, metrics.jsonl   the run's settings and tracking records (tracking/records.py)

A checkpoint counts only when COMPLETE.json exists (training/checkpoint.py writes it after every rank saved). Every
command that reads a run (evaluate, export, transcribe, a resume) finds its pieces here, so the layout is written
down once; training/checkpoint.py is the write side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xlsr_dist.state_files import CheckpointError, safe_load

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "model_config"
FINAL = "final"
MARKER = "COMPLETE.json"
PREFIX = "step-"
# In a model directory the run writes from a checkpoint (best/): which step its weights come from.
MODEL_INFO = "xlsr_dist_model.json"
TRAIN_CONFIG = "train_config.json"
RUN_INFO = "run_info.json"
# DeepSpeed's ZeRO-1/2 optimizer partitions, one per data-parallel rank; prefixed bf16_ under bf16.
_ZERO_FILE = re.compile(r"^(bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def tag_step(path: Path) -> int | None:
    """The step a ``step-NNNNNNN`` directory is named for; None for any other name."""
    m = re.fullmatch(r"step-(\d+)", path.name)
    return int(m.group(1)) if m else None


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


def read_client_state(ckpt: Path) -> dict[str, Any]:
    return dict(json.loads((ckpt / MARKER).read_text()))


def model_step(model_dir: Path) -> int | None:
    """The training step a model directory's weights come from, when the run recorded it (MODEL_INFO)."""
    try:
        return int(json.loads((model_dir / MODEL_INFO).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_step(ckpt: Path | None) -> int | None:
    """The step a complete checkpoint holds (its COMPLETE.json), None when unreadable or absent."""
    if ckpt is None:
        return None
    try:
        return int(read_client_state(ckpt)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def final_step(run_dir: Path) -> int | None:
    """The step a finished run's final/ model holds: the one it records (--load_best_model_at_end), else the last."""
    recorded = model_step(run_dir / FINAL)
    if recorded is not None:
        return recorded
    try:
        return int(json.loads((run_dir / TRAIN_CONFIG).read_text())["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class ModelSource:
    """The model path, the training run's --output_dir when it came from one, and its training step if known."""

    path: Path
    run_dir: Path | None
    step: int | None

    @property
    def home(self) -> Path:
        return self.run_dir or self.path

    def describe(self) -> str:
        return str(self.path) + (f" (step {self.step})" if self.step is not None else "")


def locate_model(path: str | Path) -> ModelSource:
    """Which run (if any) the model at ``path`` belongs to, and at which step; the same choice model.load_hf_model
    makes."""
    p = Path(path).resolve()
    if (p / MARKER).is_file():
        run = p.parent.parent if p.parent.name == CHECKPOINTS else None
        return ModelSource(p, run, checkpoint_step(p))
    if (p / FINAL / "config.json").is_file():
        return ModelSource(p, p, final_step(p))
    if (p / CHECKPOINTS).is_dir():
        return ModelSource(p, p, checkpoint_step(newest_complete(p)))
    parent = p.parent
    if any((parent / marker).exists() for marker in (RUN_INFO, TRAIN_CONFIG, CHECKPOINTS)):
        # best/ records the step its weights come from (MODEL_INFO).
        step = final_step(parent) if p.name == FINAL else model_step(p)
        return ModelSource(p, parent, step)
    return ModelSource(p, None, None)


def run_precision(source: ModelSource) -> str:
    """The precision mode the model's training run used (its train_config.json); 'fp32' for a model without one."""
    if source.run_dir is None:
        return "fp32"
    try:
        return str(json.loads((source.run_dir / TRAIN_CONFIG).read_text()).get("precision", "fp32"))
    except (OSError, ValueError, AttributeError):
        return "fp32"


def zero_partitions(ckpt: Path) -> dict[int, Path]:
    """The checkpoint's optimizer partition files by data-parallel rank (empty for a checkpoint without ZeRO)."""
    found: dict[int, Path] = {}
    for path in ckpt.iterdir():
        match = _ZERO_FILE.match(path.name)
        if match is None:
            continue
        if int(match.group(3)) != 0:
            raise CheckpointError(
                f"{ckpt}: {path.name} is a tensor/pipeline-parallel partition; xlsr_dist only resumes data-parallel "
                "checkpoints"
            )
        found[int(match.group(2))] = path
    return found


def fp32_weights(ckpt: Path) -> dict[str, torch.Tensor]:
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
    files = [path for _, path in sorted(zero_partitions(ckpt).items())]
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
