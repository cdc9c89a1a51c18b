"""specaugment.py: time masks that depend on (seed, epoch, utterance) only, with HF's statistics, and that
Wav2Vec2ForCTC applies exactly as it applies its own."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ForCTC
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from xlsr_dist.data.collate import collate_with_time_masks
from xlsr_dist.data.specaugment import TimeMasking, batch_time_masks, num_spans, time_mask
from xlsr_dist.model import output_frames, tiny_config

REPO = Path(__file__).resolve().parent.parent
DRAWS = 4000


def test_same_inputs_same_mask_other_epoch_or_utterance_other_mask() -> None:
    args = dict(mask_prob=0.3, mask_length=10, min_masks=2)
    first = time_mask(400, 7, 3, "spk1/utt-0042", **args)
    assert first.any()
    assert np.array_equal(first, time_mask(400, 7, 3, "spk1/utt-0042", **args))
    assert not np.array_equal(first, time_mask(400, 7, 4, "spk1/utt-0042", **args))
    assert not np.array_equal(first, time_mask(400, 7, 3, "spk1/utt-0043", **args))
    assert not np.array_equal(first, time_mask(400, 8, 3, "spk1/utt-0042", **args))


def test_mask_is_the_same_in_another_process() -> None:
    """str hashes are salted per process; the mask must not be."""
    code = (
        "from xlsr_dist.data.specaugment import time_mask; "
        "print(''.join('1' if m else '0' for m in time_mask(300, 1, 2, 'utt-é', 0.4, 10, 2)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    here = "".join("1" if m else "0" for m in time_mask(300, 1, 2, "utt-é", 0.4, 10, 2))
    assert other.stdout.strip() == here and "1" in here


def test_an_utterances_mask_does_not_depend_on_its_batch_or_world_size() -> None:
    lengths = {"a": 120, "b": 75, "c": 240, "d": 9, "e": 180, "f": 60, "g": 130, "h": 200}
    ids = list(lengths)
    args = dict(seed=0, epoch=5, mask_prob=0.5, mask_length=10, min_masks=1)
    alone = {u: time_mask(lengths[u], utterance_id=u, **args) for u in ids}
    for world_size in (1, 2, 4, 8):
        for rank in range(world_size):
            mine = ids[rank::world_size]
            batch = batch_time_masks([lengths[u] for u in mine], mine, **args)
            for row, u in enumerate(mine):
                assert np.array_equal(batch[row, : lengths[u]].numpy(), alone[u]), (world_size, rank, u)
    reordered = list(reversed(ids))
    batch = batch_time_masks([lengths[u] for u in reordered], reordered, **args, max_frames=256)
    for row, u in enumerate(reordered):
        assert np.array_equal(batch[row, : lengths[u]].numpy(), alone[u])


def test_padding_is_never_masked() -> None:
    lengths = [50, 20, 7, 33]
    batch = batch_time_masks(lengths, ["w", "x", "y", "z"], 1, 0, 0.9, 5, 3, max_frames=64)
    assert batch.dtype == torch.bool and batch.shape == (4, 64)
    for row, n in enumerate(lengths):
        assert batch[row, :n].any()
        assert not batch[row, n:].any()
    # Shorter than one span: nothing to mask (HF masks none of such an utterance's frames in a batch either).
    assert not batch_time_masks([4], ["short"], 1, 0, 0.9, 5, 3).any()


def test_mask_prob_zero_masks_nothing() -> None:
    assert not batch_time_masks([100, 80], ["a", "b"], 0, 0, 0.0, 10, 2).any()


def _hf_masks(length: int, mask_prob: float, mask_length: int, min_masks: int) -> np.ndarray:
    np.random.seed(1234)
    return np.stack(
        [_compute_mask_indices((1, length), mask_prob, mask_length, min_masks=min_masks)[0] for _ in range(DRAWS)]
    )


def _our_masks(length: int, mask_prob: float, mask_length: int, min_masks: int) -> np.ndarray:
    return np.stack([time_mask(length, 99, 0, f"utt-{i}", mask_prob, mask_length, min_masks) for i in range(DRAWS)])


@pytest.mark.parametrize(
    "length, mask_prob, mask_length, min_masks",
    [(400, 0.05, 10, 2), (137, 0.65, 10, 2), (49, 0.3, 10, 0), (300, 0.5, 5, 1), (137, 0.3, 1, 0), (20, 0.05, 1, 3)],
)
def test_statistics_match_hf(length: int, mask_prob: float, mask_length: int, min_masks: int) -> None:
    hf, ours = (
        _hf_masks(length, mask_prob, mask_length, min_masks),
        _our_masks(length, mask_prob, mask_length, min_masks),
    )
    # Masked fraction: equal means within 4 standard errors of their difference.
    hf_fraction, our_fraction = hf.mean(axis=1), ours.mean(axis=1)
    stderr = np.sqrt((hf_fraction.var() + our_fraction.var()) / DRAWS)
    assert abs(hf_fraction.mean() - our_fraction.mean()) <= 4 * stderr + 1e-12
    # Masked frames per utterance (span count and overlaps together): the same distribution.
    hf_counts = np.bincount(hf.sum(axis=1), minlength=length + 1) / DRAWS
    our_counts = np.bincount(ours.sum(axis=1), minlength=length + 1) / DRAWS
    assert 0.5 * np.abs(hf_counts - our_counts).sum() < 0.06
    # Where masks fall: the same profile over the utterance (edges are masked less: spans must fit).
    bins = np.array_split(np.arange(length), 5)
    for frames in bins:
        assert abs(hf[:, frames].mean() - ours[:, frames].mean()) < 0.02


def test_span_count_is_hfs_probabilistic_rounding() -> None:
    """With 1-frame spans (distinct starts, no overlap) the masked frames are the span count: int(p L / l + eps)."""
    ours = _our_masks(137, 0.3, 1, 0).sum(axis=1)
    hf = _hf_masks(137, 0.3, 1, 0).sum(axis=1)
    assert set(ours) == set(hf) == {41, 42}
    assert abs((ours == 42).mean() - 0.1) < 0.02 and abs((hf == 42).mean() - 0.1) < 0.02
    assert num_spans(20, 0.05, 1, 3, 0.99) == 3  # min_masks wins
    assert num_spans(20, 0.9, 10, 0, 0.5) == 2  # no more than fit


def test_the_model_applies_a_given_mask_as_it_applies_its_own() -> None:
    config = tiny_config(vocab_size=10, pad_token_id=0, mask_time_prob=0.5, mask_time_length=5, mask_time_min_masks=1)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).train()
    samples = [8000, 5000]
    audio = torch.randn(2, max(samples))
    attention = torch.zeros_like(audio, dtype=torch.long)
    for row, n in enumerate(samples):
        attention[row, :n] = 1
        audio[row, n:] = 0
    frames = output_frames(config, max(samples))

    # HF's own draw, reproduced: the same numpy state gives the same mask inside the model.
    feature_attention = model.wav2vec2._get_feature_vector_attention_mask(frames, attention)
    np.random.seed(3)
    hf_mask = torch.from_numpy(
        _compute_mask_indices((2, frames), 0.5, 5, attention_mask=feature_attention, min_masks=1)
    )
    np.random.seed(3)
    hf_logits = model(audio, attention_mask=attention).logits
    given = model(audio, attention_mask=attention, mask_time_indices=hf_mask).logits
    assert torch.equal(hf_logits, given)

    # Our mask: no other randomness is left with dropout and layerdrop 0 (twice the same, whatever numpy's state),
    # and it does mask.
    ours = batch_time_masks([output_frames(config, n) for n in samples], ["a", "b"], 0, 0, 0.5, 5, 1)
    assert ours.shape == (2, frames) and ours.any()
    np.random.seed(1)
    first = model(audio, attention_mask=attention, mask_time_indices=ours).logits
    np.random.seed(2)
    again = model(audio, attention_mask=attention, mask_time_indices=ours).logits
    assert torch.equal(first, again)
    with torch.no_grad():
        unmasked = model.eval()(audio, attention_mask=attention).logits
    assert not torch.allclose(first, unmasked)


def test_a_training_batch_masks_each_utterance_as_it_would_be_masked_alone() -> None:
    """Whichever rank or micro-batch an utterance lands in (so whatever the padding), its mask is the same."""
    config = tiny_config(mask_time_prob=0.3, mask_time_length=5, mask_time_min_masks=1)
    masking = TimeMasking.for_model(config, seed=42)
    assert masking == TimeMasking(42, 0.3, 5, 1)
    frames = functools.partial(output_frames, config)
    long, short = ("long", np.ones(9000, np.float32), [1], True), ("short", np.ones(4000, np.float32), [1], True)
    together = collate_with_time_masks([long, short], masking, epoch=3, frames=frames)["mask_time_indices"]
    alone = collate_with_time_masks([short], masking, epoch=3, frames=frames)["mask_time_indices"]
    assert together.shape == (2, frames(9000)) and alone.shape == (1, frames(4000))
    assert torch.equal(together[1, : frames(4000)], alone[0]) and alone.any()
    assert not together[1, frames(4000) :].any(), "padding frames are never masked"
    later = collate_with_time_masks([short], masking, epoch=4, frames=frames)["mask_time_indices"]
    assert not torch.equal(later, alone), "each epoch masks anew"
    assert TimeMasking.for_model(tiny_config(mask_time_prob=0.0), seed=42) is None
