"""Loading the files a checkpoint holds without letting them run code: torch.load(weights_only=True) with the few
plain-data classes DeepSpeed pickles allow-listed. Shared by checkpoint.py and elastic.py (neither imports the
other for this)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, incomplete, unreadable or refused."""


def _deepspeed_state_classes() -> list[Any]:
    """The classes DeepSpeed 0.19 pickles into a ZeRO-2 checkpoint beside tensors and plain containers (found by
    loading its fp32 and bf16 files with weights_only=True; fp16's dynamic loss scaling pickles DynamicLossScaler
    instead of LossScaler): the loss scaler, the ZeRO stage and the fp32 partitions' fragment addresses. Each is
    plain data; unpickling one runs no code of the file's choosing."""
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
