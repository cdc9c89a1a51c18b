"""CTC loss per utterance, shared by training and evaluation.

Computed here rather than by Wav2Vec2ForCTC(labels=...) so that padding items (valid=False, present only to keep every
rank's collectives in step) contribute nothing, and so eval can sum exact per-utterance losses across ranks.
The arithmetic matches HF's Wav2Vec2ForCTC under --ctc_loss_reduction: float32 log-softmax, blank = pad id; "mean" =
each utterance's loss / its target length, then the mean over the batch (torch's "mean"); "sum" = the batch's sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frame_lengths(model: torch.nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    return model._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(torch.long)  # type: ignore[operator]


def per_utterance_loss(
    logits: torch.Tensor,
    frames: torch.Tensor,
    labels: torch.Tensor,
    blank_id: int,
    zero_infinity: bool,
    reduction: str = "mean",
) -> torch.Tensor:
    """[B] losses; with reduction 'mean' each is divided by its target length (torch's 'mean' before batching)."""
    mask = labels >= 0
    target_lengths = mask.sum(-1)
    targets = labels.masked_select(mask)
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    # cuDNN's CTC kernel has input-length constraints that silently change results; HF disables it too.
    with torch.backends.cudnn.flags(enabled=False):
        losses = F.ctc_loss(
            log_probs, targets, frames, target_lengths, blank=blank_id, reduction="none", zero_infinity=zero_infinity
        )
    if reduction == "mean":
        losses = losses / target_lengths.clamp(min=1).to(losses.dtype)
    return losses


def batch_loss(losses: torch.Tensor, valid: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean ("mean") or sum ("sum") over valid utterances; padding items add exactly zero to the loss and its gradient,
    and an all-padding micro-batch yields 0 so backward still runs on every rank."""
    kept = torch.where(valid, losses, torch.zeros_like(losses))
    if reduction == "sum":
        return kept.sum()
    return kept.sum() / valid.sum().clamp(min=1).to(losses.dtype)
