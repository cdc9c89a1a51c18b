"""wav2vec 2.0's pretraining objective with its randomness drawn from the data: (seed, step, utterance id).

The loss is transformers' Wav2Vec2ForPreTraining's own (contrastive + ``diversity_loss_weight`` * diversity, both
sums over the masked frames of a micro-batch). What this module adds is where its three random inputs come from:

- the time mask (``mask_time_indices``): data/specaugment.time_mask with HF ``_compute_mask_indices``' statistics,
  the optimizer step in the place of the epoch;
- the negatives (``sampled_negative_indices``): ``_sample_negative_indices``' statistics (``num_negatives`` other
  masked frames of the same utterance, uniformly, never the frame itself), from that utterance's own generator;
- the Gumbel noise of the quantizer: HF draws it from the process's torch generator over the whole micro-batch, so
  it depends on the rank and the batch; ``SharedNoiseQuantizer`` takes it from the utterance's generator instead.

An utterance therefore gets the same masks, negatives and noise on any number of ranks and after any resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

from xlsr_dist.data.specaugment import time_mask, utterance_generator

# Separate streams of (seed, step, id): the time mask uses specaugment's own.
_NEGATIVES_STREAM = 0x4E454754  # "NEGT"
_GUMBEL_STREAM = 0x47554D42  # "GUMB"


@dataclass(frozen=True, kw_only=True)
class Objective:
    """The objective's settings (config/pretrain.py's flags) and the run's seed."""

    seed: int
    mask_prob: float
    mask_length: int
    min_masks: int
    num_negatives: int
    max_gumbel_temperature: float
    min_gumbel_temperature: float
    gumbel_temperature_decay: float

    def gumbel_temperature(self, step: int) -> float:
        """The temperature for optimizer step ``step`` (0 before the first), as the HF example sets it after each
        step: max(max * decay**step, min)."""
        return max(self.max_gumbel_temperature * self.gumbel_temperature_decay**step, self.min_gumbel_temperature)

    def draw(
        self, frame_lengths: Sequence[int], ids: Sequence[str], step: int, width: int, vars_shape: tuple[int, int]
    ) -> Draws:
        """Masks, negatives and Gumbel noise of a padded micro-batch at optimizer ``step`` (1-based).

        ``vars_shape`` is (codevector groups, codevectors per group). Padding frames are never masked and never a
        negative; their noise is 1.0 (they reach neither the loss nor the perplexity)."""
        b = len(ids)
        masks = np.zeros((b, width), dtype=bool)
        negatives = np.zeros((b, width, self.num_negatives), dtype=np.int64)
        noise = torch.ones((b, width, vars_shape[0], vars_shape[1]), dtype=torch.float32)
        for row, (frames, uid) in enumerate(zip(frame_lengths, ids)):
            masks[row, :frames] = time_mask(
                frames, self.seed, step, uid, self.mask_prob, self.mask_length, self.min_masks
            )
            negatives[row] = utterance_negatives(masks[row], self.num_negatives, self.seed, step, uid) + row * width
            noise[row, :frames] = gumbel_exponentials((frames, *vars_shape), self.seed, step, uid)
        return Draws(torch.from_numpy(masks), torch.from_numpy(negatives), noise)


@dataclass(frozen=True)
class Draws:
    mask_time_indices: torch.Tensor
    """bool [B, F]"""
    sampled_negative_indices: torch.Tensor
    """int64 [B, F, K]: flat indices into the B*F frames, as _sample_negative_indices returns them"""
    exponentials: torch.Tensor
    """float32 [B, F, groups, vars]: Exp(1) samples; the Gumbel noise is -log of them (torch's gumbel_softmax)"""


def utterance_negatives(mask: np.ndarray, num_negatives: int, seed: int, step: int, utterance_id: str) -> np.ndarray:
    """[F, num_negatives] frame indices within the utterance: for each masked frame, other masked frames drawn
    uniformly with replacement (``_sample_negative_indices``); unmasked frames (and a lone masked frame, which has
    no other) point at themselves, which the loss ignores or sets to -inf."""
    frames = mask.size
    out = np.broadcast_to(np.arange(frames)[:, None], (frames, num_negatives)).copy()
    masked = np.flatnonzero(mask)
    if masked.size < 2:
        return out
    rng = utterance_generator(seed, step, utterance_id, _NEGATIVES_STREAM)
    high = masked.size - 1
    sampled = rng.integers(0, high, size=(masked.size, num_negatives))
    # Skip the positive itself while keeping the distribution uniform over the others, as HF does.
    sampled[sampled >= np.arange(masked.size)[:, None]] += 1
    out[masked] = masked[sampled]
    return out


def gumbel_exponentials(shape: tuple[int, ...], seed: int, step: int, utterance_id: str) -> torch.Tensor:
    """Exp(1) samples of one utterance from its own generator (torch's gumbel_softmax draws these with exponential_)."""
    rng = utterance_generator(seed, step, utterance_id, _GUMBEL_STREAM)
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    return torch.empty(shape, dtype=torch.float32).exponential_(generator=generator)


class SharedNoiseQuantizer(Wav2Vec2GumbelVectorQuantizer):
    """HF's Gumbel quantizer taking its noise from ``self.exponentials`` (set per micro-batch) when training.

    Its forward is HF's with torch's ``gumbel_softmax(hard=True)`` written out around the given noise; without
    noise, or in eval mode, it is HF's. Installed by ``install_shared_noise`` on the model's own quantizer (same
    parameters, same state-dict names)."""

    exponentials: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, mask_time_indices: torch.Tensor | None = None) -> Any:
        if not self.training or self.exponentials is None:
            return super().forward(hidden_states, mask_time_indices=mask_time_indices)
        batch_size, sequence_length, _ = hidden_states.shape
        hidden_states = self.weight_proj(hidden_states)
        hidden_states = hidden_states.view(batch_size * sequence_length * self.num_groups, -1)
        logits = hidden_states.float()
        gumbels = -self.exponentials.to(logits.device).reshape(logits.shape).log()
        soft = ((logits + gumbels) / self.temperature).softmax(-1)
        hard = torch.zeros_like(logits).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        codevector_probs = (hard - soft.detach() + soft).type_as(hidden_states)
        codevector_soft_dist = torch.softmax(
            hidden_states.view(batch_size * sequence_length, self.num_groups, -1).float(), dim=-1
        )
        perplexity = self._compute_perplexity(codevector_soft_dist, mask_time_indices)
        codevector_probs = codevector_probs.view(batch_size * sequence_length, -1)
        codevectors_per_group = codevector_probs.unsqueeze(-1) * self.codevectors
        codevectors = codevectors_per_group.view(batch_size * sequence_length, self.num_groups, self.num_vars, -1)
        return codevectors.sum(-2).view(batch_size, sequence_length, -1), perplexity


def install_shared_noise(model: torch.nn.Module) -> SharedNoiseQuantizer:
    """Make ``model.quantizer`` a SharedNoiseQuantizer in place (its parameters untouched)."""
    quantizer = model.quantizer  # type: ignore[union-attr]
    quantizer.__class__ = SharedNoiseQuantizer
    return quantizer


@dataclass(frozen=True)
class Sums:
    """One micro-batch's loss parts as sums over its masked frames (add micro-batches and ranks, then divide)."""

    loss: torch.Tensor
    """HF's loss: the tensor to backpropagate (after normalisation)"""
    contrastive: float
    diversity: float
    perplexity: float
    correct: float
    masked: float


def pretraining_forward(
    model: Any, batch: dict[str, Any], draws: Draws, device: torch.device, dtype: torch.dtype
) -> Sums:
    """Wav2Vec2ForPreTraining's forward on a batch with these draws (the Gumbel noise through the quantizer)."""
    quantizer = quantizer_of(model)
    quantizer.exponentials = draws.exponentials
    mask = draws.mask_time_indices.to(device)
    try:
        out = model(
            input_values=batch["input_values"].to(device, dtype),
            attention_mask=batch["attention_mask"].to(device),
            mask_time_indices=mask,
            sampled_negative_indices=draws.sampled_negative_indices.to(device),
        )
    finally:
        quantizer.exponentials = None
    correct = true_vector_hits(out, draws.sampled_negative_indices.to(device), mask, temperature_of(model))
    return Sums(
        loss=out.loss,
        contrastive=float(out.contrastive_loss.detach()),
        diversity=float(out.diversity_loss.detach()),
        perplexity=float(out.codevector_perplexity.detach()),
        correct=correct,
        masked=float(mask.sum()),
    )


def _unwrapped(model: Any) -> Any:
    return getattr(model, "module", model)


def quantizer_of(model: Any) -> SharedNoiseQuantizer:
    return _unwrapped(model).quantizer


def temperature_of(model: Any) -> float:
    return float(_unwrapped(model).config.contrastive_logits_temperature)


@torch.no_grad()
def true_vector_hits(out: Any, negatives: torch.Tensor, mask: torch.Tensor, temperature: float) -> float:
    """Masked frames whose true quantised vector scores above all its negatives (wav2vec 2.0's accuracy), from the
    same logits Wav2Vec2ForPreTraining's loss is taken on."""
    quantized, predicted = out.projected_quantized_states, out.projected_states
    b, f, h = quantized.shape
    negative = quantized.reshape(-1, h)[negatives.reshape(-1)].view(b, f, -1, h).permute(2, 0, 1, 3)
    targets = torch.cat([quantized[None], negative], dim=0)
    logits = torch.cosine_similarity(predicted.float(), targets.float(), dim=-1) / temperature
    logits[1:][(quantized == negative).all(-1)] = float("-inf")
    hits = (logits[0] > logits[1:].max(0).values) & mask
    return float(hits.sum())
