"""model.py: architectures, frame arithmetic, CTC head, freezing, padding invariance and the offline error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2ForCTC

from xlsr_dist import text
from xlsr_dist.config import ModelConfig
from xlsr_dist.model import (
    ModelLoadError,
    build_model,
    build_processor,
    count_parameters,
    output_frames,
    tiny_config,
    xlsr53_config,
)

REPO = Path(__file__).resolve().parent.parent


def test_xlsr53_architecture_matches_the_checkpoint() -> None:
    cfg = xlsr53_config(vocab_size=40, pad_token_id=39)
    with torch.device("meta"):  # shapes only: no 1.2 GB of weights allocated
        model = Wav2Vec2ForCTC(cfg)
    # ~315M parameters like the checkpoint, plus a 1024 x 40 CTC head.
    head = 1024 * 40 + 40
    assert 314_000_000 < count_parameters(model) - head < 317_000_000
    assert model.lm_head.out_features == 40
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        1024,
        24,
        16,
        4096,
    )
    assert cfg.do_stable_layer_norm and cfg.feat_extract_norm == "layer" and cfg.conv_bias
    # 20 ms frames: one second of audio gives 49 frames, as the real checkpoint does.
    assert output_frames(cfg, 16000) == 49


def test_tiny_model_is_small_and_makes_100_frames_per_second() -> None:
    cfg = tiny_config(vocab_size=29, pad_token_id=28)
    model = Wav2Vec2ForCTC(cfg)
    assert 500_000 <= count_parameters(model) <= 1_000_000
    assert output_frames(cfg, 16000 * 3) in range(295, 301)
    assert cfg.feat_extract_norm == "layer" and cfg.do_stable_layer_norm


@pytest.mark.parametrize("make", [tiny_config, xlsr53_config])
def test_output_frames_equals_the_models_own_formula(make) -> None:
    cfg = make()
    with torch.device("meta"):
        model = Wav2Vec2ForCTC(cfg)
    lengths = list(range(300, 1200, 7)) + [16000, 16001, 16159, 16160, 16161, 48000, 123457, 320000]
    expected = model._get_feat_extract_output_lengths(torch.tensor(lengths, device="cpu")).tolist()
    assert [output_frames(cfg, n) for n in lengths] == expected
    # Too short for even one frame: 0, never negative.
    assert output_frames(cfg, 0) == 0 and output_frames(cfg, 5) == 0


def test_ctc_head_is_sized_to_the_vocabulary_and_settings_come_from_the_flags() -> None:
    vocab = text.build_vocab(["hello world", "quiz"])
    cfg = ModelConfig(
        architecture="tiny",
        freeze_feature_encoder=False,
        mask_time_prob=0.02,
        hidden_dropout=0.1,
        ctc_loss_reduction="sum",
        ctc_zero_infinity=False,
    )
    model = build_model(cfg, len(vocab), vocab[text.PAD])
    assert model.lm_head.out_features == len(vocab)
    assert model.config.pad_token_id == vocab[text.PAD]
    assert model.config.mask_time_prob == 0.02 and model.config.hidden_dropout == 0.1
    # Recorded in the saved config.json for whoever fine-tunes final/ further with HF; the loss training and eval
    # compute under this flag is tests/test_ctc.py's.
    assert model.config.ctc_loss_reduction == "sum" and model.config.ctc_zero_infinity is False


def test_freeze_feature_encoder_flag_is_respected() -> None:
    frozen = build_model(ModelConfig(architecture="tiny", freeze_feature_encoder=True), 29, 28)
    trainable = build_model(ModelConfig(architecture="tiny", freeze_feature_encoder=False), 29, 28)
    conv = [p.requires_grad for p in frozen.wav2vec2.feature_extractor.parameters()]
    assert conv and not any(conv)
    assert all(p.requires_grad for p in frozen.wav2vec2.encoder.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    assert count_parameters(frozen, trainable_only=True) < count_parameters(trainable, trainable_only=True)


def test_ctc_blank_bias_starts_a_random_model_predicting_blank() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(architecture="tiny"), 29, 28)
    torch.manual_seed(0)
    biased = build_model(ModelConfig(architecture="tiny", ctc_blank_bias=5.0), 29, 28)
    assert biased.lm_head.bias[28].item() == 5.0
    assert torch.equal(biased.lm_head.bias[:28], plain.lm_head.bias[:28])
    assert torch.equal(biased.lm_head.weight, plain.lm_head.weight)
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        blank = [m(audio).logits.softmax(-1)[..., 28].mean().item() for m in (plain, biased)]
    assert blank[0] < 0.1 and blank[1] > 0.75, blank


def test_gradient_checkpointing_flag_is_respected() -> None:
    model = build_model(ModelConfig(architecture="tiny", gradient_checkpointing=True), 29, 28)
    flag = getattr(type(model), "is_activation_checkpointing", None)
    assert model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing


def test_same_seed_builds_identical_weights() -> None:
    # Every rank builds its own copy; they must start equal.
    torch.manual_seed(3)
    a = build_model(ModelConfig(architecture="tiny"), 29, 28)
    torch.manual_seed(3)
    b = build_model(ModelConfig(architecture="tiny"), 29, 28)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_padding_does_not_change_the_logits_of_valid_frames() -> None:
    # Runs on different world sizes pad utterances differently; their losses must not depend on it.
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="tiny", freeze_feature_encoder=False), 29, 28).eval()
    short, long = torch.randn(1, 16000), torch.randn(1, 27_531)
    batch = torch.zeros(2, long.shape[1])
    batch[0, : short.shape[1]] = short
    batch[1] = long
    mask = torch.zeros(2, long.shape[1], dtype=torch.long)
    mask[0, : short.shape[1]] = 1
    mask[1] = 1
    with torch.no_grad():
        alone = model(short, attention_mask=torch.ones_like(short, dtype=torch.long)).logits[0]
        padded = model(batch, attention_mask=mask).logits[0]
    n = output_frames(model.config, short.shape[1])
    assert alone.shape[0] == n
    torch.testing.assert_close(padded[:n], alone, atol=1e-5, rtol=0)


def test_processor_round_trips_a_transcript(tmp_path: Path) -> None:
    vocab = text.build_vocab(["the quick brown fox"])
    text.save_vocab(vocab, tmp_path / "vocab.json")
    processor = build_processor(tmp_path / "vocab.json")
    ids = processor.tokenizer("the fox").input_ids
    assert ids == text.encode("the fox", vocab)
    assert processor.tokenizer.decode(ids) == "the fox"
    assert processor.tokenizer.pad_token_id == vocab[text.PAD]
    features = processor.feature_extractor([0.5] * 100 + [0.1] * 100, sampling_rate=16000, return_tensors="np")
    assert abs(float(features.input_values.mean())) < 1e-5 and "attention_mask" in features


def test_unknown_architecture_is_refused_with_the_flag_name() -> None:
    with pytest.raises(ModelLoadError, match="--architecture"):
        build_model(ModelConfig(architecture="huge"), 29, 28)


def test_missing_local_checkpoint_directory_says_how_to_provide_weights(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ModelLoadError, match="--model_name_or_path") as info:
        build_model(ModelConfig(model_name_or_path=str(tmp_path / "ckpt")), 29, 28)
    assert "--architecture xlsr-53" in str(info.value)


def test_offline_without_cached_weights_fails_fast_with_instructions(tmp_path: Path) -> None:
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    script = textwrap.dedent(
        """
        import time
        from xlsr_dist.config import ModelConfig
        from xlsr_dist.model import ModelLoadError, build_model
        started = time.monotonic()
        try:
            build_model(ModelConfig(), 40, 39)
        except ModelLoadError as e:
            print("MODEL_LOAD_ERROR", e)
        print(f"SECONDS {time.monotonic() - started:.3f}")
        """
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("TRANSFORMERS_CACHE", None)
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "MODEL_LOAD_ERROR" in proc.stdout, proc.stdout + proc.stderr
    message = proc.stdout
    assert "facebook/wav2vec2-large-xlsr-53" in message
    assert "hf download" in message and "--model_name_or_path" in message and "--architecture xlsr-53" in message
    # No network retries: huggingface_hub's retry loop alone would wait 1+2+4+8+8 s before giving up.
    seconds = float(message.rsplit("SECONDS", 1)[1])
    assert seconds < 10, f"build_model took {seconds:.1f} s to report missing weights"
