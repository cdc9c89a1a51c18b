"""The one forward path: (model, batch) -> logits, per-utterance CTC losses, greedy ids.

The training step, the in-training evaluation, `evaluate` and `transcribe` all run a batch through here, so the
input dtype, the attention mask, the output frame count and the loss arithmetic (ctc.py) cannot drift apart between
them. ``model`` is a Wav2Vec2ForCTC or a DeepSpeed engine wrapping one (the engine's forward is what training must
call: it runs ZeRO's hooks and its own autocast). No collective, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xlsr_dist import ctc, precision

# Bucket lengths for compiled forwards: from half a second, 8 per doubling (each <= 9.1 % longer than the last),
# whole 20 ms frames: 55 lengths up to a minute, so a compiled model sees few distinct shapes.
BUCKET_FLOOR_SAMPLES = 8000
BUCKETS_PER_DOUBLING = 8
_FRAME_SAMPLES = 320

# (batch size, bucket length, training) of every batch padded in this process: a compiled model (dynamic=False)
# builds one graph per distinct entry, so CompileCounts compares its graphs with this.
_padded_shapes: set[tuple[int, int, bool]] = set()


def padded_shapes() -> int:
    """Distinct (batch size, bucket length, training mode) padded in this process so far."""
    return len(_padded_shapes)


@dataclass(frozen=True)
class CTCLoss:
    """How the CTC loss is computed: the blank id (the pad token), HF's ctc_zero_infinity and
    --ctc_loss_reduction."""

    blank_id: int
    zero_infinity: bool
    reduction: str = "mean"


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor  # [B, T, V] as the model returned them
    frames: torch.Tensor  # [B] output frames each utterance really has (padding excluded)
    losses: torch.Tensor | None  # [B] per-utterance CTC loss, None when no loss was asked for

    def greedy_ids(self) -> list[list[int]]:
        """Each utterance's most likely output per frame, cut at its own frame count (before CTC collapsing)."""
        predicted = self.logits.argmax(-1).cpu()
        frames = self.frames.cpu().tolist()
        return [predicted[i, : int(n)].tolist() for i, n in enumerate(frames)]


def bucket_length(samples: int) -> int:
    """The smallest bucket length (samples) that holds ``samples``."""
    if samples <= BUCKET_FLOOR_SAMPLES:
        return BUCKET_FLOOR_SAMPLES
    k = math.ceil(BUCKETS_PER_DOUBLING * math.log2(samples / BUCKET_FLOOR_SAMPLES))
    while BUCKET_FLOOR_SAMPLES * 2 ** (k / BUCKETS_PER_DOUBLING) < samples:  # float rounding at an exact bucket
        k += 1
    length = BUCKET_FLOOR_SAMPLES * 2 ** (k / BUCKETS_PER_DOUBLING)
    return math.ceil(length / _FRAME_SAMPLES) * _FRAME_SAMPLES


def padded_to_bucket(model: Any, batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """``batch`` with its samples (and SpecAugment frames) padded up to ``bucket_length``: padding is masked, so the
    real frames' outputs and the loss are those of the unpadded batch up to float rounding."""
    t = int(batch["input_values"].shape[1])
    target = bucket_length(t)
    _padded_shapes.add((int(batch["input_values"].shape[0]), target, bool(getattr(model, "training", True))))
    if target == t:
        return batch
    out = dict(batch)
    out["input_values"] = F.pad(batch["input_values"], (0, target - t))
    out["attention_mask"] = F.pad(batch["attention_mask"], (0, target - t))
    if "mask_time_indices" in batch:
        masks = batch["mask_time_indices"]
        inner = getattr(model, "module", model)
        frames = int(inner._get_feat_extract_output_lengths(torch.tensor(target)))
        out["mask_time_indices"] = F.pad(masks, (0, frames - int(masks.shape[1])))
    return out


def is_compiled(model: Any) -> bool:
    """Whether ``model`` (a module or a DeepSpeed engine) was compiled in place (nn.Module.compile, which DeepSpeed's
    engine.compile() uses): its forwards are then padded to bucket lengths, evaluation's included."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_compiled_call_impl", None) is not None


def forward(
    model: Any,
    batch: Mapping[str, Any],
    device: torch.device,
    loss: CTCLoss | None = None,
    dtype: torch.dtype = torch.float32,
    autocast_mode: str = "fp32",
    bucket: bool = False,
) -> Output:
    """Run ``batch`` (collate.Batch: input_values, attention_mask, labels; mask_time_indices on training batches)
    through ``model`` on ``device``.

    ``dtype``: the input's dtype (the engine's fp16/bf16 weights take 16-bit input). ``autocast_mode`` "amp": the
    forward runs under fp16 autocast, for a plain module of a Native AMP run (a DeepSpeed engine configured with
    torch_autocast does that itself; pass "fp32" for it). SpecAugment masks are handed to the model when the batch
    carries them: the model then draws none of its own. ``bucket``: pad the batch up to ``bucket_length`` first
    (--torch_compile: a bounded set of shapes).
    """
    if bucket:
        batch = padded_to_bucket(model, batch)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    input_values = batch["input_values"].to(device, dtype, non_blocking=True)
    extra = {}
    if "mask_time_indices" in batch:
        extra["mask_time_indices"] = batch["mask_time_indices"].to(device, non_blocking=True)
    with precision.forward_autocast(autocast_mode, device):
        logits = model(input_values=input_values, attention_mask=mask, **extra).logits
    frames = ctc.frame_lengths(getattr(model, "module", model), mask)
    losses = None
    if loss is not None:
        losses = ctc.per_utterance_loss(
            logits,
            frames,
            batch["labels"].to(device, non_blocking=True),
            loss.blank_id,
            loss.zero_infinity,
            loss.reduction,
        )
    return Output(logits=logits, frames=frames, losses=losses)
