"""layerdrop.py: which layers are skipped is a function of (seed, step) with HF's per-layer probability, and the
encoder skips exactly those layers in training and none in evaluation."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Wav2Vec2ForCTC

from xlsr_dist.model import tiny_config
from xlsr_dist.training.layerdrop import SharedLayerDrop, dropped_layers, install


def test_the_draw_depends_on_seed_and_step_only_with_the_given_probability() -> None:
    assert dropped_layers(42, 7, 24, 0.3) == dropped_layers(42, 7, 24, 0.3)
    draws = [dropped_layers(42, step, 24, 0.3) for step in range(1, 2001)]
    assert len(set(draws)) > 1900, "other steps draw other layers"
    assert [dropped_layers(43, step, 24, 0.3) for step in range(1, 51)] != draws[:50], "another seed, other layers"
    rate = np.mean([len(d) for d in draws]) / 24
    assert abs(rate - 0.3) < 0.01
    per_layer = np.bincount([i for d in draws for i in d], minlength=24) / len(draws)
    assert np.all(np.abs(per_layer - 0.3) < 0.05), "each layer independently, as HF draws"
    assert dropped_layers(42, 7, 24, 0.0) == frozenset()


def _model() -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(tiny_config(vocab_size=10, num_hidden_layers=4, layerdrop=0.5))


def test_the_encoder_skips_the_drawn_layers_in_training_only() -> None:
    model = _model()
    shared = install(model, 0.5, seed=1)
    assert isinstance(shared, SharedLayerDrop) and model.config.layerdrop == 0.0, "HF's own per-rank draw is off"
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in _model().named_parameters()]
    step = next(s for s in range(1, 100) if 0 < len(dropped_layers(1, s, 4, 0.5)) < 4)
    dropped = shared.begin_step(step)
    audio = torch.randn(1, 4000)

    model.train()
    trained = model(audio).logits
    assert torch.equal(trained, model(audio).logits), "no other randomness: the same layers twice"

    # The same network with the dropped layers removed by hand.
    reference = _model().train()
    reference.wav2vec2.encoder.layers = torch.nn.ModuleList(
        layer for i, layer in enumerate(reference.wav2vec2.encoder.layers) if i not in dropped
    )
    reference.config.layerdrop = 0.0
    assert torch.equal(trained, reference(audio).logits)

    model.eval()
    with torch.no_grad():
        every_layer = _model().eval()
        every_layer.config.layerdrop = 0.0
        assert torch.equal(model(audio).logits, every_layer(audio).logits), "evaluation runs every layer"


def test_no_layerdrop_installs_nothing() -> None:
    model = _model()
    assert install(model, 0.0, seed=1) is None
    assert type(model.wav2vec2.encoder.layers) is torch.nn.ModuleList
