"""Pretraining's objective is transformers' own: the same loss as Wav2Vec2ForPreTraining's forward on the same batch,
masks, negatives and Gumbel noise; its draws are functions of (seed, step, utterance id) with HF's statistics; the
model loads with its quantizer (and refuses a checkpoint without one) and leaves an encoder Wav2Vec2ForCTC loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

from xlsr_dist.config import ModelConfig
from xlsr_dist.data.collate import collate
from xlsr_dist.model import ModelLoadError, output_frames, tiny_config
from xlsr_dist.training.pretraining.model import build_pretraining_model, save_for_finetuning
from xlsr_dist.training.pretraining.objective import (
    Objective,
    install_shared_noise,
    pretraining_forward,
    utterance_negatives,
)

OBJECTIVE = Objective(
    seed=3,
    mask_prob=0.65,
    mask_length=10,
    min_masks=2,
    num_negatives=100,
    max_gumbel_temperature=2.0,
    min_gumbel_temperature=0.5,
    gumbel_temperature_decay=0.999995,
)


def tiny_pretraining_model(seed: int = 0) -> Wav2Vec2ForPreTraining:
    torch.manual_seed(seed)
    return Wav2Vec2ForPreTraining(tiny_config(num_negatives=100, diversity_loss_weight=0.1, mask_time_prob=0.65))


def batch_of(lengths: list[int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = [(f"utt-{i}", rng.standard_normal(n).astype(np.float32), [], True) for i, n in enumerate(lengths)]
    return collate(items)


def draws_for(model: Wav2Vec2ForPreTraining, batch: dict, step: int):
    config = model.config
    frames = [output_frames(config, int(n)) for n in batch["attention_mask"].sum(-1)]
    width = output_frames(config, batch["input_values"].shape[1])
    groups = (config.num_codevector_groups, config.num_codevectors_per_group)
    return OBJECTIVE.draw(frames, batch["ids"], step, width, groups)


def test_loss_equals_transformers_forward_in_training_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights, batch, masks and negatives; HF's quantizer draws its noise with torch's own gumbel_softmax from a
    seeded generator, ours is handed the same Exp(1) samples: loss, contrastive and diversity parts agree."""
    reference = tiny_pretraining_model()
    ours = copy.deepcopy(reference)
    install_shared_noise(ours)
    for m in (reference, ours):
        m.train()
        m.set_gumbel_temperature(1.7)
    batch = batch_of([16000, 12000, 7000])
    draws = draws_for(ours, batch, step=5)
    torch.manual_seed(11)
    exponentials = torch.empty(draws.exponentials.numel()).exponential_().view_as(draws.exponentials)
    draws = type(draws)(draws.mask_time_indices, draws.sampled_negative_indices, exponentials)

    real = torch.nn.functional.gumbel_softmax

    def seeded_gumbel(logits: torch.Tensor, tau: float, hard: bool) -> torch.Tensor:
        torch.manual_seed(11)  # the noise drawn above, in the same order and shape
        return real(logits, tau=tau, hard=hard)

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", seeded_gumbel)
    expected = reference(
        input_values=batch["input_values"],
        attention_mask=batch["attention_mask"],
        mask_time_indices=draws.mask_time_indices,
        sampled_negative_indices=draws.sampled_negative_indices,
    )
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", real)
    got = pretraining_forward(ours, batch, draws, torch.device("cpu"), torch.float32)
    assert draws.mask_time_indices.sum() > 0
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    assert got.contrastive == pytest.approx(expected.contrastive_loss.item(), rel=1e-6)
    assert got.diversity == pytest.approx(expected.diversity_loss.item(), rel=1e-6)
    assert got.perplexity == pytest.approx(expected.codevector_perplexity.item(), rel=1e-6)
    # The gradients too: the objective is the loss HF backpropagates.
    got.loss.backward()
    expected.loss.backward()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert 0 <= got.correct <= got.masked


def test_draws_depend_on_seed_step_and_id_only() -> None:
    """An utterance's mask, negatives and noise are the same whatever batch it lands in; another step draws anew."""
    model = tiny_pretraining_model()
    alone = draws_for(model, batch_of([12000]), step=7)
    batch = batch_of([16000, 12000])
    batch["ids"] = ["utt-other", "utt-0"]
    together = draws_for(model, batch, step=7)
    f = int(alone.mask_time_indices.shape[1])
    assert torch.equal(together.mask_time_indices[1, :f], alone.mask_time_indices[0])
    assert not together.mask_time_indices[1, f:].any()
    width = together.mask_time_indices.shape[1]
    assert torch.equal(together.sampled_negative_indices[1, :f] - width, alone.sampled_negative_indices[0])
    assert torch.equal(together.exponentials[1, :f], alone.exponentials[0])
    later = draws_for(model, batch_of([12000]), step=8)
    assert not torch.equal(later.mask_time_indices, alone.mask_time_indices)


def test_negatives_have_hf_statistics() -> None:
    """Other masked frames of the same utterance, never the frame itself, uniform over them (HF's
    _sample_negative_indices)."""
    mask = np.zeros(300, dtype=bool)
    mask[[3, 4, 5, 50, 51, 200, 201, 202, 203, 299]] = True
    neg = utterance_negatives(mask, 100, seed=1, step=2, utterance_id="u")
    masked = np.flatnonzero(mask)
    for frame in masked:
        assert set(neg[frame]) <= set(masked) - {frame}
    assert (neg[~mask] == np.arange(300)[~mask, None]).all()
    counts = np.bincount(neg[masked].ravel(), minlength=300)[masked]
    # 1000 draws over 10 frames, each frame a candidate for 9 of 10 rows: ~100 each.
    assert counts.min() > 60 and counts.max() < 140


def test_gumbel_temperature_schedule() -> None:
    assert OBJECTIVE.gumbel_temperature(0) == 2.0
    assert OBJECTIVE.gumbel_temperature(1000) == pytest.approx(2.0 * 0.999995**1000)
    assert OBJECTIVE.gumbel_temperature(10**7) == 0.5


def test_continue_from_checkpoint_with_quantizer_and_refuse_one_without(tmp_path: Path) -> None:
    source = tiny_pretraining_model(seed=4)
    source.save_pretrained(tmp_path / "pre")
    loaded = build_pretraining_model(ModelConfig(model_name_or_path=str(tmp_path / "pre")), 0.65, 100, 0.1)
    torch.testing.assert_close(loaded.quantizer.codevectors, source.quantizer.codevectors)
    Wav2Vec2ForCTC(tiny_config()).save_pretrained(tmp_path / "ctc")
    with pytest.raises(ModelLoadError, match="has no quantizer"):
        build_pretraining_model(ModelConfig(model_name_or_path=str(tmp_path / "ctc")), 0.65, 100, 0.1)


def test_saved_encoder_loads_for_finetuning(tmp_path: Path) -> None:
    model = tiny_pretraining_model(seed=5)
    save_for_finetuning(model, tmp_path / "final")
    ctc, info = Wav2Vec2ForCTC.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not info["unexpected_keys"], "the quantizer and projections are dropped"
    assert all(k.startswith("lm_head") for k in info["missing_keys"])
    torch.testing.assert_close(
        ctc.wav2vec2.encoder.layers[0].attention.k_proj.weight, model.wav2vec2.encoder.layers[0].attention.k_proj.weight
    )


def test_prepare_audio_without_transcripts_and_stream_it(tmp_path: Path) -> None:
    """`prepare --layout audio` takes a folder (or a list file) of audio, marks the split unlabelled, and the
    pretraining stream serves it: each step's global batch is the same whatever the world size."""
    import soundfile as sf

    from xlsr_dist.config import plan_batches
    from xlsr_dist.data.shards import read_rows
    from xlsr_dist.prepare import run
    from xlsr_dist.training.pretraining.data import PretrainStream, audio_catalog

    corpus = tmp_path / "calls" / "day1"
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(corpus / f"c{i}.wav", 0.1 * rng.standard_normal(4000 + 1000 * i), 16000)
    (corpus / "notes.txt").write_text("not audio")
    run(["--layout", "audio", "--input", str(tmp_path / "calls"), "--output", str(tmp_path / "shards")])
    split = tmp_path / "shards" / "train"
    manifest = json.loads((split / "manifest.json").read_text())
    assert manifest["unlabelled"] is True
    catalog = audio_catalog(str(split), 0.3, 30.0)
    assert len(catalog) == 7  # 0.25 s is shorter than the minimum
    assert list(catalog.ids)[0] == "day1/c1.wav"
    rows = read_rows(catalog.shard_paths[0], [0])
    assert rows[0]["text"] == ""

    (tmp_path / "list.txt").write_text("# two files\ncalls/day1/c2.wav\n\ncalls/day1/c3.wav\n")
    run(["--layout", "audio", "--input", str(tmp_path / "list.txt"), "--output", str(tmp_path / "listed")])
    assert len(audio_catalog(str(tmp_path / "listed" / "train"), 0.0, 30.0)) == 2

    def union(world_size: int, step: int, max_seconds: float = 0.0) -> list[str]:
        plan = plan_batches(4, world_size, 1)
        ids: list[str] = []
        for rank in range(world_size):
            stream = PretrainStream(catalog, plan, rank, seed=1, bucket_size_multiplier=2, max_seconds=max_seconds)
            got_step, batches = next(stream.steps(step))
            assert got_step == step
            ids += [uid for b in batches for uid in b["ids"]]
        return ids

    for step in (1, 2, 5):
        assert union(1, step) == union(2, step) == union(4, step)
        assert union(1, step, 2.5) == union(2, step, 2.5) == union(4, step, 2.5)
    assert union(1, 1) != union(1, 2)  # a new epoch, a new order


def test_batches_by_total_seconds() -> None:
    """fairseq's max_tokens way: a global batch holds at most max_seconds of audio (or the minimum of one utterance
    per micro-batch), each utterance at most once an epoch, the same plan for the same (seed, epoch)."""
    from xlsr_dist.data.partition import common_voice_like_durations
    from xlsr_dist.training.pretraining.data import seconds_batches

    d = common_voice_like_durations(500, seed=3)
    batches = seconds_batches(d, seed=1, epoch=0, max_seconds=60.0, groups=4, bucket_size_multiplier=5)
    assert all(len(b) >= 4 for b in batches)
    assert all(d[b].sum() <= 60.0 or len(b) == 4 for b in batches)
    used = np.concatenate(batches)
    assert len(set(used.tolist())) == used.size
    assert d.sum() - d[used].sum() < 60.0 + d.max()  # only the last partial batch is left out
    assert 8 <= np.median([len(b) for b in batches]) <= 13  # ~60 s of ~5 s utterances
    again = seconds_batches(d, seed=1, epoch=0, max_seconds=60.0, groups=4, bucket_size_multiplier=5)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = seconds_batches(d, seed=1, epoch=1, max_seconds=60.0, groups=4, bucket_size_multiplier=5)
    assert not np.array_equal(np.concatenate(other), used)
    # Bucketing: the spread of durations inside a batch is far below the corpus's.
    assert np.median([np.ptp(d[b]) for b in batches]) < 0.25 * np.ptp(d)


def test_pretraining_needs_no_eval_data_and_reports_only_real_problems() -> None:
    """Pretraining evaluates nothing: a run on shards without --eval_data parses (training would refuse it), and a
    bad flag is reported without the training tree's --eval_data demand beside it."""
    from xlsr_dist.config import ConfigError
    from xlsr_dist.config.pretrain import parse_pretrain_args

    cfg, _ = parse_pretrain_args(["--train_data", "/data/shards/calls/train", "--output_dir", "runs/pt"])
    assert cfg.data.train_data == "/data/shards/calls/train" and cfg.data.eval_data == ""
    with pytest.raises(ConfigError) as info:
        parse_pretrain_args(["--train_data", "/data/shards/calls/train", "--learning_rate", "-1"])
    assert info.value.problems == ["--learning_rate: -1.0 must be > 0"]
