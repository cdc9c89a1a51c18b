"""LayerDrop that every rank draws alike: which encoder layers are skipped is a function of (seed, optimizer step).

HF's encoder draws each layer's drop from the process's torch generator, seeded per rank: ranks skip different layers,
so their ZeRO-2 gradient buckets differ and the reduction fails or hangs, and a run on another number of ranks (or a
resume on one) skips other layers. Here the encoder's ``layers`` list is replaced by a ``SharedLayerDrop`` that, while
training, leaves out the layers drawn for the current step; HF's own draw is switched off (``config.layerdrop`` 0).
Each layer is dropped with probability p independently, as in HF, and the same layers are dropped for every
micro-batch of the step, so 1 rank with gradient accumulation and N ranks see the same network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from torch import nn

# Separates this use of (seed, step) from any other stream derived from them.
_LAYERDROP_STREAM = 0x4C445250  # "LDRP"


def dropped_layers(seed: int, step: int, num_layers: int, probability: float) -> frozenset[int]:
    """Indices of the layers skipped at optimizer ``step``: each with ``probability``, from (seed, step) alone."""
    if probability <= 0 or num_layers == 0:
        return frozenset()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, _LAYERDROP_STREAM])))
    return frozenset(int(i) for i in np.flatnonzero(rng.random(num_layers) < probability))


class SharedLayerDrop(nn.ModuleList):
    """The encoder's layers; iterating them in training mode yields only this step's kept layers.

    A ModuleList subclass so parameter names, state dicts and save_pretrained are unchanged: only the encoder's
    ``for layer in self.layers`` loop sees the difference, and only in training mode (evaluation runs every layer).
    """

    def __init__(self, layers: Iterable[nn.Module], probability: float, seed: int) -> None:
        super().__init__(layers)
        self.probability, self.seed = float(probability), int(seed)
        self.dropped: frozenset[int] = frozenset()

    def begin_step(self, step: int) -> frozenset[int]:
        """Draw the layers skipped at optimizer ``step`` (1-based, as logged); they stay skipped until the next call."""
        self.dropped = dropped_layers(self.seed, step, len(self), self.probability)
        return self.dropped

    def __iter__(self) -> Iterator[nn.Module]:
        layers = super().__iter__()
        if not self.training or not self.dropped:
            return layers
        return (layer for index, layer in enumerate(layers) if index not in self.dropped)


def install(model: nn.Module, probability: float, seed: int) -> SharedLayerDrop | None:
    """Replace ``model``'s wav2vec2 encoder layers by a SharedLayerDrop (None when ``probability`` is 0) and switch
    HF's per-process draw off."""
    if probability <= 0:
        return None
    encoder = model.wav2vec2.encoder  # type: ignore[union-attr]
    shared = SharedLayerDrop(list(encoder.layers), probability, seed)
    encoder.layers = shared
    encoder.config.layerdrop = 0.0
    model.config.layerdrop = 0.0  # type: ignore[union-attr]
    return shared
