"""The project's CTC loss is HF's Wav2Vec2ForCTC loss under --ctc_loss_reduction, and padding items (valid=False)
change neither the loss nor any gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ForCTC

from xlsr_dist import ctc
from xlsr_dist.data.collate import collate, dummy_item
from xlsr_dist.model import tiny_config

VOCAB, BLANK = 12, 0


def _items(seed: int) -> list[tuple[str, np.ndarray, list[int], bool]]:
    """Three utterances of different lengths and transcripts: the batch is padded in audio and in labels."""
    rng = np.random.default_rng(seed)
    shapes = [(16000, 9), (11200, 4), (6400, 6)]
    return [
        (f"u{i}", rng.standard_normal(n).astype(np.float32), rng.integers(1, VOCAB, size=k).tolist(), True)
        for i, (n, k) in enumerate(shapes)
    ]


def _model(reduction: str) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(
        tiny_config(vocab_size=VOCAB, pad_token_id=BLANK, ctc_loss_reduction=reduction, ctc_zero_infinity=True)
    )
    return model.eval()  # no dropout or SpecAugment: both forwards below see the same logits


def _project_loss(model: Wav2Vec2ForCTC, logits: torch.Tensor, batch: dict, reduction: str) -> torch.Tensor:
    losses = ctc.per_utterance_loss(
        logits, ctc.frame_lengths(model, batch["attention_mask"]), batch["labels"], BLANK, True, reduction
    )
    return ctc.batch_loss(losses, batch["valid"], reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_per_utterance_ctc_equals_hf_loss_on_a_padded_batch(reduction: str) -> None:
    model = _model(reduction)
    batch = collate(_items(1))
    assert batch["attention_mask"].sum(-1).unique().numel() == 3 and (batch["labels"] < 0).any(), "not padded"
    with torch.no_grad():
        hf = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        ours = _project_loss(model, hf.logits, batch, reduction)
    assert float(ours) == pytest.approx(float(hf.loss), rel=1e-6)
    # "sum" is not a rescaled "mean": the two differ by more than a constant factor on this batch.
    other = "sum" if reduction == "mean" else "mean"
    with torch.no_grad():
        assert float(_project_loss(model, hf.logits, batch, other)) != pytest.approx(float(ours), rel=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_padding_items_add_exactly_zero_loss_and_gradient(reduction: str) -> None:
    model = _model(reduction)
    real = _items(2)
    with_padding = collate([real[0], dummy_item(), real[1], real[2]])
    without = collate(real)
    assert with_padding["valid"].tolist() == [True, False, True, True]

    def loss_and_grads(batch: dict) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
        logits.retain_grad()
        loss = _project_loss(model, logits, batch, reduction)
        loss.backward()
        assert logits.grad is not None
        return loss.detach(), logits.grad, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded_loss, padded_logit_grad, padded_param_grads = loss_and_grads(with_padding)
    loss, _, param_grads = loss_and_grads(without)
    assert torch.count_nonzero(padded_logit_grad[1]) == 0, "the padding item's logits got a gradient"
    assert float(padded_loss) == pytest.approx(float(loss), rel=1e-6)
    assert len(padded_param_grads) == len(param_grads)
    # Equal up to float summation order (the batched matmuls see 4 rows instead of 3).
    for padded, alone in zip(padded_param_grads, param_grads):
        torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5 * max(1.0, float(alone.abs().max())))


def test_an_all_padding_micro_batch_has_zero_loss_and_zero_gradient() -> None:
    model = _model("mean")
    batch = collate([dummy_item(), dummy_item()])
    logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
    loss = _project_loss(model, logits, batch, "mean")
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters() if p.grad is not None)
