"""collate gives the model what HF's feature extractor + CTC collator would, plus the bookkeeping the loop needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from xlsr_dist.data.collate import collate, dummy_item


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.3 * rng.standard_normal(n) + 0.05).astype(np.float32) for n in (16000, 9000, 12345)]


def test_input_values_match_wav2vec2_feature_extractor() -> None:
    waves = _waves()
    batch = collate([(f"u{i}", w, [1, 2], True) for i, w in enumerate(waves)])
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    ref = fe(waves, sampling_rate=16000, padding="longest", return_tensors="np")
    np.testing.assert_allclose(batch["input_values"].numpy(), ref["input_values"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["attention_mask"].numpy(), ref["attention_mask"])
    assert batch["input_values"].dtype == torch.float32 and batch["attention_mask"].dtype == torch.int64
    assert (batch["input_values"][1, 9000:] == 0).all()


def test_labels_padding_ids_and_sample_counts() -> None:
    waves = _waves()
    batch = collate([("a", waves[0], [3, 4, 5], True), ("b", waves[1], [6], True)])
    assert batch["labels"].tolist() == [[3, 4, 5], [6, -100, -100]]
    assert batch["labels"].dtype == torch.int64
    assert batch["ids"] == ["a", "b"]
    assert batch["valid"].tolist() == [True, True]
    assert batch["real_samples"] == 25000 and batch["padded_samples"] == 7000
    assert batch["audio_seconds"] == pytest.approx(25000 / 16000)


def test_dummy_item_is_silent_invalid_and_unlabelled() -> None:
    batch = collate([dummy_item()])
    assert batch["input_values"].shape == (1, 16000)
    assert torch.isfinite(batch["input_values"]).all() and (batch["input_values"] == 0).all()
    assert batch["valid"].tolist() == [False]
    assert (batch["labels"] == -100).all()
    assert batch["audio_seconds"] == 0.0 and batch["real_samples"] == 0


def test_empty_item_list_is_refused() -> None:
    with pytest.raises(ValueError, match="dummy_item"):
        collate([])
