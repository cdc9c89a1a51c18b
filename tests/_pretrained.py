"""A stand-in for facebook/wav2vec2-large-xlsr-53: its config.json key for key (sizes shrunk), random weights, laid
out as a local directory or as a Hugging Face hub cache; and what a loaded CTC model looks like next to it.

    python tests/_pretrained.py NAME_OR_DIR OUT.json   # build_model(--model_name_or_path NAME_OR_DIR) -> OUT.json
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2ForPreTraining  # noqa: E402

from xlsr_dist.config import ModelConfig  # noqa: E402
from xlsr_dist.model import build_model  # noqa: E402

HUB_ID = "facebook/wav2vec2-large-xlsr-53"
# Any 40-hex commit: huggingface_hub resolves refs/main to snapshots/<this>.
SNAPSHOT = "3b0a0bc4b1f1a7ce3d4b5a8e6f7c8d9e0a1b2c3d"

# config.json of facebook/wav2vec2-large-xlsr-53 (a pretraining checkpoint written by transformers 4.x): every key and
# value as published. Legacy keys (mask_channel_*, mask_time_selection, feat_extract_dropout, gradient_checkpointing)
# are part of what a loader must cope with.
XLSR53_CONFIG_JSON: dict[str, Any] = {
    "activation_dropout": 0.0,
    "apply_spec_augment": True,
    "architectures": ["Wav2Vec2ForPreTraining"],
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "codevector_dim": 768,
    "contrastive_logits_temperature": 0.1,
    "conv_bias": True,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "diversity_loss_weight": 0.1,
    "do_stable_layer_norm": True,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "layer",
    "feat_proj_dropout": 0.1,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.0,
    "gradient_checkpointing": True,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "mask_channel_length": 10,
    "mask_channel_min_space": 1,
    "mask_channel_other": 0.0,
    "mask_channel_prob": 0.0,
    "mask_channel_selection": "static",
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_min_space": 1,
    "mask_time_other": 0.0,
    "mask_time_prob": 0.075,
    "mask_time_selection": "static",
    "model_type": "wav2vec2",
    "num_attention_heads": 16,
    "num_codevector_groups": 2,
    "num_codevectors_per_group": 320,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 24,
    "num_negatives": 100,
    "pad_token_id": 0,
    "proj_codevector_dim": 768,
    "transformers_version": "4.4.0.dev0",
    "vocab_size": 32,
}

# Same keys, test-sized values: 3 conv layers (320x downsampling, 50 frames/s like the real one), 2 small layers.
TINY_SIZES: dict[str, Any] = {
    "conv_dim": [32, 32, 32],
    "conv_kernel": [10, 8, 4],
    "conv_stride": [5, 16, 4],
    "num_feat_extract_layers": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "num_codevectors_per_group": 8,
    "codevector_dim": 16,
    "proj_codevector_dim": 16,
}

PREPROCESSOR_CONFIG_JSON = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0,
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


def checkpoint_config_json() -> dict[str, Any]:
    return {**XLSR53_CONFIG_JSON, **TINY_SIZES}


def pretraining_model() -> Wav2Vec2ForPreTraining:
    """The pretraining model with random weights (seeded), as the checkpoint holds it."""
    config = Wav2Vec2Config.from_dict(checkpoint_config_json())
    torch.manual_seed(0)
    return Wav2Vec2ForPreTraining(config)


def save_local(model: Wav2Vec2ForPreTraining, directory: Path) -> None:
    """save_pretrained, then the published config.json in place of the one transformers writes today."""
    model.save_pretrained(str(directory))
    (directory / "config.json").write_text(json.dumps(checkpoint_config_json(), indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG_JSON, indent=2))


def legacy_state_dict(model: Wav2Vec2ForPreTraining) -> dict[str, torch.Tensor]:
    """The state dict under the names a transformers 4.x pytorch_model.bin has: weight norm as weight_g / weight_v."""
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        renamed[key] = value.detach().clone().contiguous()
    return renamed


def save_hub_cache(model: Wav2Vec2ForPreTraining, hub_cache: Path) -> Path:
    """HF_HUB_CACHE/models--facebook--wav2vec2-large-xlsr-53 as `hf download` leaves it: content-addressed blobs,
    snapshots/<commit>/ of relative symlinks to them, refs/main naming the commit. The weights are a
    pytorch_model.bin, as on the hub's main branch."""
    repo = hub_cache / ("models--" + HUB_ID.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / SNAPSHOT
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    staging = repo / "staging.bin"
    torch.save(legacy_state_dict(model), staging)
    files = {
        "config.json": json.dumps(checkpoint_config_json(), indent=2).encode(),
        "preprocessor_config.json": json.dumps(PREPROCESSOR_CONFIG_JSON, indent=2).encode(),
        "pytorch_model.bin": staging.read_bytes(),
    }
    staging.unlink()
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blobs / digest, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return repo


# Fine-tuning settings deliberately unlike the checkpoint's, so an override that is not applied shows.
FINETUNE = {
    "attention_dropout": 0.0,
    "activation_dropout": 0.05,
    "feat_proj_dropout": 0.0,
    "hidden_dropout": 0.0,
    "final_dropout": 0.02,
    "mask_time_prob": 0.05,
    "layerdrop": 0.0,
    "ctc_loss_reduction": "mean",
    "ctc_zero_infinity": True,
}
VOCAB_SIZE, PAD_ID = 40, 39


def model_config(name_or_path: str, gradient_checkpointing: bool = False) -> ModelConfig:
    return ModelConfig(model_name_or_path=name_or_path, gradient_checkpointing=gradient_checkpointing, **FINETUNE)


def train_steps(model: Wav2Vec2ForCTC, steps: int = 6) -> list[float]:
    """A few AdamW steps on one fixed batch of 1 s utterances; the losses."""
    generator = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 16000, generator=generator)
    labels = torch.randint(0, PAD_ID, (2, 12), generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(input_values=audio, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def checkpointing(model: Wav2Vec2ForCTC) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the property."""
    on = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if on is not None else model.is_gradient_checkpointing)


def describe(model: Wav2Vec2ForCTC) -> dict[str, Any]:
    """What the tests check about a loaded model, as JSON: compared against the checkpoint's own state dict."""
    checkpoint = pretraining_model().state_dict()
    loaded = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shared = sorted(set(loaded) & set(checkpoint))
    feature_encoder = {n for n, _ in model.named_parameters() if n.startswith("wav2vec2.feature_extractor.")}
    config = model.config
    before_training = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before_training[n])}
    return {
        "new": sorted(set(loaded) - set(checkpoint)),
        "dropped": sorted(set(checkpoint) - set(loaded)),
        "not_as_saved": [k for k in shared if not torch.equal(loaded[k], checkpoint[k])],
        "lm_head": [model.lm_head.in_features, model.lm_head.out_features],
        "config": {k: getattr(config, k) for k in [*FINETUNE, "vocab_size", "pad_token_id"]},
        "module_dropouts": {
            "attention": model.wav2vec2.encoder.layers[0].attention.dropout,
            "activation": model.wav2vec2.encoder.layers[0].feed_forward.intermediate_dropout.p,
            "final": model.dropout.p,
        },
        "gradient_checkpointing": checkpointing(model),
        "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
        "feature_encoder": sorted(feature_encoder),
        "losses": losses,
        "changed_by_training": sorted(changed),
    }


def main() -> None:
    name_or_path, out = sys.argv[1], Path(sys.argv[2])
    gradient_checkpointing = len(sys.argv) > 3 and sys.argv[3] == "checkpointing"
    model = build_model(model_config(name_or_path, gradient_checkpointing), VOCAB_SIZE, PAD_ID)
    out.write_text(json.dumps(describe(model)))


if __name__ == "__main__":
    main()
