"""SpecAugment time masks as a function of the data: (seed, epoch, utterance id) -> mask.

HF's Wav2Vec2Model draws its masks from numpy's global generator on each rank, so they depend on which rank an
utterance lands on, what else is in its batch, and how many batches that rank drew before: a run resumed on another
world size, or with another batch composition, masks differently. Here each utterance's mask comes from a generator
seeded by (seed, epoch, a stable hash of its id) alone, with the statistics of HF's ``_compute_mask_indices`` for
that utterance on its own; the batch is passed to the model as ``mask_time_indices``, which Wav2Vec2Model then uses
instead of drawing its own.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Separates this use of (seed, epoch, id) from any other stream derived from them (a feature mask, say).
_TIME_MASK_STREAM = 0x54494D45  # "TIME"


def utterance_generator(
    seed: int, epoch: int, utterance_id: str, stream: int = _TIME_MASK_STREAM
) -> np.random.Generator:
    """A generator that depends on these values only: the same in every process, run and Python version
    (``hash(str)`` is salted per process; blake2b is not)."""
    digest = hashlib.blake2b(utterance_id.encode("utf-8"), digest_size=16).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, stream, *words])))


def num_spans(num_frames: int, mask_prob: float, mask_length: int, min_masks: int, epsilon: float) -> int:
    """How many spans HF's ``_compute_mask_indices`` masks in an unpadded utterance of ``num_frames``: the expected
    ``mask_prob * num_frames / mask_length`` rounded up or down at random (``epsilon`` uniform in [0, 1)), at least
    ``min_masks``, at most what fits."""
    spans = max(int(mask_prob * num_frames / mask_length + epsilon), min_masks)
    if spans * mask_length > num_frames:
        spans = num_frames // mask_length
    return min(spans, max(num_frames - (mask_length - 1), 0))


def time_mask(
    num_frames: int,
    seed: int,
    epoch: int,
    utterance_id: str,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
) -> np.ndarray:
    """Boolean mask over an utterance's ``num_frames`` feature frames.

    Spans of ``mask_length`` frames start at distinct positions drawn uniformly from those where a whole span fits,
    and may overlap, as in HF. An utterance shorter than one span is not masked (HF masks none of it in a batch; alone
    it would raise). ``mask_prob`` 0 masks nothing whatever ``min_masks`` says, as Wav2Vec2Model skips masking then.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be at least 1, got {mask_length}")
    mask = np.zeros(num_frames, dtype=bool)
    if mask_prob <= 0 or num_frames < mask_length:
        return mask
    rng = utterance_generator(seed, epoch, utterance_id)
    spans = num_spans(num_frames, mask_prob, mask_length, min_masks, float(rng.random()))
    if spans == 0:
        return mask
    starts = rng.choice(num_frames - mask_length + 1, size=spans, replace=False)
    mask[(starts[:, None] + np.arange(mask_length)[None, :]).ravel()] = True
    return mask


def batch_time_masks(
    frame_lengths: Sequence[int],
    utterance_ids: Sequence[str],
    seed: int,
    epoch: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    max_frames: int | None = None,
) -> torch.Tensor:
    """``mask_time_indices`` for a padded batch: bool [batch, max_frames] (default: the longest utterance's frames),
    row i the mask of utterance i alone; padding frames are never masked."""
    if len(frame_lengths) != len(utterance_ids):
        raise ValueError(f"{len(frame_lengths)} frame lengths for {len(utterance_ids)} utterance ids")
    width = max(frame_lengths, default=0) if max_frames is None else max_frames
    if any(n > width for n in frame_lengths):
        raise ValueError(f"an utterance has more frames ({max(frame_lengths)}) than the batch ({width})")
    out = np.zeros((len(frame_lengths), width), dtype=bool)
    for row, (frames, utterance_id) in enumerate(zip(frame_lengths, utterance_ids)):
        out[row, :frames] = time_mask(frames, seed, epoch, utterance_id, mask_prob, mask_length, min_masks)
    return torch.from_numpy(out)


@dataclass(frozen=True)
class TimeMasking:
    """What the training stream needs to mask each batch: the model's SpecAugment settings and the run's seed."""

    seed: int
    mask_prob: float
    mask_length: int
    min_masks: int

    @staticmethod
    def for_model(config: Any, seed: int) -> TimeMasking | None:
        """The masking a Wav2Vec2 ``config`` asks for in training, None when it masks nothing."""
        if not getattr(config, "apply_spec_augment", True) or config.mask_time_prob <= 0:
            return None
        return TimeMasking(
            seed, float(config.mask_time_prob), int(config.mask_time_length), int(config.mask_time_min_masks)
        )

    def batch(
        self, sample_lengths: Sequence[int], utterance_ids: Sequence[str], epoch: int, frames: Callable[[int], int]
    ) -> torch.Tensor:
        """``mask_time_indices`` for a padded batch of utterances with these sample counts; ``frames`` maps samples
        to the model's feature frames."""
        return batch_time_masks(
            [frames(n) for n in sample_lengths],
            utterance_ids,
            self.seed,
            epoch,
            self.mask_prob,
            self.mask_length,
            self.min_masks,
            max_frames=frames(max(sample_lengths, default=0)),
        )


def forward_takes_time_masks(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward hands ``mask_time_indices`` on to Wav2Vec2Model (transformers 5's Wav2Vec2ForCTC
    passes its keyword arguments through; 4.x's has none)."""
    parameters = inspect.signature(model.forward).parameters.values()
    return any(p.name == "mask_time_indices" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
