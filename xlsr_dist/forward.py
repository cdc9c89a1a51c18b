"""The one forward path: (model, batch) -> logits, per-utterance CTC losses, greedy ids.

The training step, the in-training evaluation, `evaluate` and `transcribe` all run a batch through here, so the
input dtype, the attention mask, the output frame count and the loss arithmetic (ctc.py) cannot drift apart between
them. ``model`` is a Wav2Vec2ForCTC or a DeepSpeed engine wrapping one (the engine's forward is what training must
call: it runs ZeRO's hooks and its own autocast). No collective, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from xlsr_dist import ctc, precision


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


def forward(
    model: Any,
    batch: Mapping[str, Any],
    device: torch.device,
    loss: CTCLoss | None = None,
    dtype: torch.dtype = torch.float32,
    autocast_mode: str = "fp32",
) -> Output:
    """Run ``batch`` (collate.Batch: input_values, attention_mask, labels; mask_time_indices on training batches)
    through ``model`` on ``device``.

    ``dtype``: the input's dtype (the engine's fp16/bf16 weights take 16-bit input). ``autocast_mode`` "amp": the
    forward runs under fp16 autocast, for a plain module of a Native AMP run (a DeepSpeed engine configured with
    torch_autocast does that itself; pass "fp32" for it). SpecAugment masks are handed to the model when the batch
    carries them: the model then draws none of its own.
    """
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
