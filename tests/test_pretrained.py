"""Fine-tuning starts from facebook/wav2vec2-large-xlsr-53: a pretraining checkpoint with that exact config.json (test
sizes, random weights) loads through xlsr_dist.model.build_model from a directory and, offline, from a Hugging Face
cache, with a new CTC head, the fine-tuning overrides, a frozen feature encoder, and every other weight as saved."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import Wav2Vec2ForPreTraining

from tests import _pretrained
from tests._dist import ROOT, base_env, run_launcher
from xlsr_dist.model import build_model

# The pretraining heads that fine-tuning drops, and the CTC head it adds.
PRETRAINING_ONLY = {
    "quantizer.codevectors",
    "quantizer.weight_proj.weight",
    "quantizer.weight_proj.bias",
    "project_q.weight",
    "project_q.bias",
    "project_hid.weight",
    "project_hid.bias",
}
CTC_HEAD = {"lm_head.weight", "lm_head.bias"}


def _check_fine_tuning_model(loaded: dict[str, Any]) -> None:
    assert set(loaded["new"]) == CTC_HEAD
    assert set(loaded["dropped"]) == PRETRAINING_ONLY
    # Every other weight is the checkpoint's, bit for bit: the weight-norm pair of the positional convolution too,
    # whatever names the file gives it.
    assert loaded["not_as_saved"] == []
    assert loaded["lm_head"] == [_pretrained.TINY_SIZES["hidden_size"], _pretrained.VOCAB_SIZE]
    expected = {**_pretrained.FINETUNE, "vocab_size": _pretrained.VOCAB_SIZE, "pad_token_id": _pretrained.PAD_ID}
    assert loaded["config"] == expected
    assert loaded["module_dropouts"] == {
        "attention": _pretrained.FINETUNE["attention_dropout"],
        "activation": _pretrained.FINETUNE["activation_dropout"],
        "final": _pretrained.FINETUNE["final_dropout"],
    }
    assert loaded["frozen"] == loaded["feature_encoder"] and len(loaded["frozen"]) == 3 * 4  # conv w/b + LN w/b
    # Training moves everything but the frozen feature encoder, and the loss goes down on a repeated batch.
    losses = loaded["losses"]
    assert all(loss == loss and loss < float("inf") for loss in losses) and losses[-1] < losses[0]
    assert set(loaded["changed_by_training"]).isdisjoint(loaded["frozen"])
    assert CTC_HEAD <= set(loaded["changed_by_training"])
    assert "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight" in loaded["changed_by_training"]


@pytest.fixture(scope="module")
def checkpoint_model() -> Wav2Vec2ForPreTraining:
    return _pretrained.pretraining_model()


def test_config_json_has_the_published_keys() -> None:
    written = _pretrained.checkpoint_config_json()
    assert set(written) == set(_pretrained.XLSR53_CONFIG_JSON)
    assert written["architectures"] == ["Wav2Vec2ForPreTraining"]
    # The regularisation the checkpoint was pretrained with, which fine-tuning must override.
    published = _pretrained.XLSR53_CONFIG_JSON
    assert (published["mask_time_prob"], published["layerdrop"], published["ctc_zero_infinity"]) == (0.075, 0.1, False)


def test_loads_from_a_local_directory(
    checkpoint_model: Wav2Vec2ForPreTraining,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _pretrained.save_local(checkpoint_model, tmp_path / "xlsr53")
    # transformers' loggers do not propagate to the root logger caplog listens on: listen on its loader directly.
    transformers_loader = logging.getLogger("transformers.modeling_utils")
    transformers_loader.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            model = build_model(
                _pretrained.model_config(str(tmp_path / "xlsr53")), _pretrained.VOCAB_SIZE, _pretrained.PAD_ID
            )
    finally:
        transformers_loader.removeHandler(caplog.handler)
    _check_fine_tuning_model(_pretrained.describe(model))
    # One short line instead of transformers' load report table.
    assert [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()] == [
        f"loaded {tmp_path / 'xlsr53'}: newly initialised: {', '.join(sorted(CTC_HEAD))}; dropped (not used by CTC "
        f"fine-tuning): {', '.join(sorted(PRETRAINING_ONLY))}"
    ]
    assert "LOAD REPORT" not in caplog.text


# The checkpoint's config.json carries transformers' legacy "gradient_checkpointing": true, which turns it on at load.
@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_gradient_checkpointing_follows_the_flag_not_the_config(
    gradient_checkpointing: bool, checkpoint_model: Wav2Vec2ForPreTraining, tmp_path: Path
) -> None:
    _pretrained.save_local(checkpoint_model, tmp_path / "xlsr53")
    cfg = _pretrained.model_config(str(tmp_path / "xlsr53"), gradient_checkpointing=gradient_checkpointing)
    model = build_model(cfg, _pretrained.VOCAB_SIZE, _pretrained.PAD_ID)
    assert _pretrained.checkpointing(model) == gradient_checkpointing


def test_loads_by_hub_id_from_an_offline_hugging_face_cache(
    checkpoint_model: Wav2Vec2ForPreTraining, tmp_path: Path
) -> None:
    """How clusters without internet get it: a copied ~/.cache/huggingface and HF_HUB_OFFLINE=1. The variables are
    read when huggingface_hub is imported, so the load runs in a fresh process."""
    hf_home = tmp_path / "hf_home"
    repo = _pretrained.save_hub_cache(checkpoint_model, hf_home / "hub")
    assert (repo / "snapshots" / _pretrained.SNAPSHOT / "pytorch_model.bin").is_symlink()
    env = base_env(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1")
    env.pop("TRANSFORMERS_CACHE", None)
    out = tmp_path / "loaded.json"
    proc = run_launcher(
        [sys.executable, str(ROOT / "tests/_pretrained.py"), _pretrained.HUB_ID, str(out)],
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_fine_tuning_model(json.loads(out.read_text()))
