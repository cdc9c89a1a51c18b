"""Long audio in overlapping windows whose stitched logits stand in for the whole file's (as HF's ASR pipeline
does with chunk_length_s / stride_length_s): each window carries up to `context` samples of audio on either side
of the frames it keeps, so memory is bounded by the window, not the file.

Frames stay aligned to the file's: a window starts on a multiple of the feature encoder's hop, so its frame j is
the file's frame j + start / hop, and the kept frames of consecutive windows tile the file's frames exactly once.
Windows are planned as audio arrives (`next_window`), without knowing the file's length until its end: a stream
whose length in 16 kHz samples is only known once resampled can be cut as it is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameGeometry:
    """The feature encoder's convolutions (no padding): which samples make which frame."""

    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    @staticmethod
    def from_config(config: Any) -> FrameGeometry:
        """From a Wav2Vec2Config; a model with an adapter (padded convolutions after the encoder) is refused."""
        if getattr(config, "add_adapter", False):
            raise ValueError("models with an adapter (add_adapter) are not supported by chunked transcription")
        return FrameGeometry(tuple(int(k) for k in config.conv_kernel), tuple(int(s) for s in config.conv_stride))

    @property
    def hop(self) -> int:
        """Samples between consecutive frames."""
        return math.prod(self.strides)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees."""
        field, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            field += (k - 1) * jump
            jump *= s
        return field

    def frames(self, num_samples: int) -> int:
        """xlsr_dist.model.output_frames for this encoder."""
        length = int(num_samples)
        for k, s in zip(self.kernels, self.strides):
            if length < k:
                return 0
            length = (length - k) // s + 1
        return length

    def seconds_per_frame(self, sample_rate: int) -> float:
        return self.hop / sample_rate


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of the file go through the model; of its frames, [keep_from, keep_to) are kept. Its
    first frame is the file's frame ``first_frame``."""

    start: int
    end: int
    keep_from: int
    keep_to: int
    first_frame: int


@dataclass(frozen=True)
class ChunkPlan:
    """Windows of at most ``chunk_samples`` (+ a frame's receptive field beyond its hop) with ``context`` frames of
    context on each side of the kept ``step`` frames."""

    geometry: FrameGeometry
    chunk_samples: int
    context_frames: int

    @staticmethod
    def of(geometry: FrameGeometry, chunk_samples: int, context_samples: int) -> ChunkPlan:
        context = math.ceil(context_samples / geometry.hop)
        plan = ChunkPlan(geometry, int(chunk_samples), context)
        if plan.step < 1:
            raise ValueError(
                f"a window of {chunk_samples} samples keeps no frame with {context_samples} samples of context on "
                "each side"
            )
        return plan

    @property
    def step(self) -> int:
        """Frames each window keeps (the last may keep fewer or more)."""
        return self.chunk_samples // self.geometry.hop - 2 * self.context_frames

    @property
    def span(self) -> int:
        """Samples of the longest window."""
        g = self.geometry
        return self.chunk_samples // g.hop * g.hop + g.receptive_field - g.hop


def next_window(plan: ChunkPlan, first_kept: int, available: int, final: bool) -> Window | None:
    """The window keeping frames from the file's frame ``first_kept`` on, once ``available`` samples of the file are
    known (``final``: that is all of it); None while more audio is needed, or, at the end, when no frame is left.

    While the rest of the file might still fit one window (from this window's start), nothing is cut: the window
    then reaches to the end of the file. So a file no longer than the chunk is one window, the whole file, exactly
    as without chunking, and no file ends in a sliver of a window.
    """
    g = plan.geometry
    first = max(0, first_kept - plan.context_frames)
    start = first * g.hop
    if available - start <= plan.span:
        if not final:
            return None
        total = g.frames(available)
        if first_kept >= total and first_kept > 0:
            return None
        return Window(start, available, first_kept - first, max(total - first, first_kept - first), first)
    keep_to = first_kept + plan.step
    end = (keep_to + plan.context_frames) * g.hop + g.receptive_field - g.hop
    return Window(start, end, first_kept - first, keep_to - first, first)


def windows(plan: ChunkPlan, num_samples: int) -> list[Window]:
    """Every window of a file of ``num_samples`` samples, in order."""
    out: list[Window] = []
    first_kept = 0
    while (w := next_window(plan, first_kept, num_samples, final=True)) is not None:
        out.append(w)
        first_kept = w.first_frame + w.keep_to
        if w.end >= num_samples:
            break
    return out


def stitch(pieces: Sequence[np.ndarray], plan_windows: Sequence[Window]) -> np.ndarray:
    """The file's (frames, vocab) logits from each window's, keeping each window's centre."""
    kept = [p[w.keep_from : w.keep_to] for p, w in zip(pieces, plan_windows)]
    return np.concatenate(kept, axis=0) if kept else np.zeros((0, 0), dtype=np.float32)
