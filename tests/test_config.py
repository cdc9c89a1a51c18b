"""Batch arithmetic, flag validation and config files: what a user sees before any process starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xlsr_dist.config import ConfigError, build_config, parse_args, plan_batches, valid_world_sizes

EXPECTED_DEFAULT = {1: (4, 2), 2: (4, 1), 4: (2, 1), 8: (1, 1)}


@pytest.mark.parametrize("world", range(1, 17))
def test_global_batch_is_exactly_8_or_refused(world: int) -> None:
    if 8 % world == 0:
        plan = plan_batches(8, world)
        assert plan.micro_batch * plan.grad_accum * world == 8
        assert (plan.micro_batch, plan.grad_accum) == EXPECTED_DEFAULT[world]
    else:
        with pytest.raises(ConfigError) as err:
            plan_batches(8, world)
        message = str(err.value)
        assert f"world size {world}" in message and "1, 2, 4, 8" in message


@pytest.mark.parametrize("world,micro,accum", [(1, 8, 1), (1, 2, 4), (1, 1, 8), (2, 2, 2), (2, 1, 4), (4, 1, 2)])
def test_user_micro_batch_derives_accumulation(world: int, micro: int, accum: int) -> None:
    plan = plan_batches(8, world, micro)
    assert (plan.micro_batch, plan.grad_accum) == (micro, accum)


def test_micro_batch_that_does_not_divide_names_the_flag_and_choices() -> None:
    with pytest.raises(ConfigError) as err:
        plan_batches(8, 2, 3)
    assert "--per_device_train_batch_size 3" in str(err.value) and "1, 2, 4" in str(err.value)


def test_valid_world_sizes() -> None:
    assert valid_world_sizes(8, 16) == [1, 2, 4, 8]


def test_every_problem_is_reported_at_once_naming_each_flag() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "learning_rate": -1,
                "warmup_steps": -5,
                "architecture": "huge",
                "logging_steps": 0,
                "bogus_key": 1,
                "deepspeed": "nope.json",
            }
        )
    flags = [p.split(":")[0] for p in err.value.problems]
    assert flags == [
        "--bogus_key",
        "--architecture",
        "--learning_rate",
        "--warmup_steps",
        "--logging_steps",
        "--deepspeed",
    ]


def test_ctc_blank_bias_is_only_for_models_built_from_random_weights() -> None:
    assert build_config({"architecture": "tiny", "ctc_blank_bias": 5}).model.ctc_blank_bias == 5.0
    with pytest.raises(ConfigError) as err:
        build_config({"ctc_blank_bias": 5})
    assert [p.split(":")[0] for p in err.value.problems] == ["--ctc_blank_bias"]


def test_bad_types_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"max_steps": "ten", "learning_rate": "fast", "freeze_feature_encoder": "maybe"})
    assert err.value.problems == [
        "--max_steps: expected an integer, got 'ten'",
        "--learning_rate: expected a number, got 'fast'",
        "--freeze_feature_encoder: expected true/false, got 'maybe'",
    ]


def test_a_value_that_does_not_parse_and_an_invalid_one_are_reported_together() -> None:
    # The command line of issue 11: only the parse error used to be shown.
    with pytest.raises(ConfigError) as err:
        parse_args(["--learning_rate", "-1", "--warmup_steps", "abc", "--bogus", "5"])
    assert err.value.problems == [
        "unrecognized argument(s): --bogus 5 (see `python -m xlsr_dist.train --help`)",
        "--warmup_steps: expected an integer, got 'abc'",
        "--learning_rate: -1.0 must be > 0",
    ]


def test_a_flag_that_did_not_parse_is_not_also_judged_by_its_default() -> None:
    # max_duration keeps its default 20 while unparsed: "must be greater than --min_duration_in_seconds" would
    # be about that default, not about what was typed.
    with pytest.raises(ConfigError) as err:
        build_config({"max_duration_in_seconds": "long", "min_duration_in_seconds": 30})
    assert err.value.problems == ["--max_duration_in_seconds: expected a number, got 'long'"]


def test_argparse_errors_and_unreadable_config_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_args(["--learning_rate"])
    assert err.value.problems == [
        "argument --learning_rate: expected one argument (see `python -m xlsr_dist.train --help`)"
    ]
    broken = tmp_path / "run.yaml"
    broken.write_text("learning_rate: [1e-4\n")
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", str(broken)])
    assert err.value.problems[0].startswith(f"--config {broken}: cannot be read as YAML (")


def test_defaults_are_the_reference_recipe() -> None:
    cfg = build_config({})
    t = cfg.train
    assert (t.learning_rate, t.warmup_steps, t.num_train_epochs, t.seed, t.global_batch_size) == (1e-4, 1000, 30, 42, 8)
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (0.9, 0.999, 1e-8, 0, 1.0)
    assert (t.eval_steps, t.save_steps, t.logging_steps) == (500, 500, 25)
    assert cfg.model.model_name_or_path == "facebook/wav2vec2-large-xlsr-53"
    assert cfg.model.ctc_zero_infinity and cfg.model.freeze_feature_encoder and cfg.model.mask_time_prob == 0.05
    assert t.deepspeed == "ds_configs/zero2_fp16.json"


def test_config_file_then_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.002\nmax_steps: 300\narchitecture: tiny\n")
    cfg = parse_args(["--config", str(path), "--max_steps", "50"])
    assert cfg.train.learning_rate == 0.002 and cfg.train.max_steps == 50 and cfg.model.architecture == "tiny"


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rat": 1e-3}))
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", str(path)])
    assert "--learning_rat" in str(err.value) and str(path) in str(err.value)


def test_shipped_launch_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "launch"
    configs = sorted(root.glob("*.yaml"))
    assert configs, "launch/ holds the demo config"
    for path in configs:
        parse_args(["--config", str(path)])


def test_language_settings_are_validated_naming_each_flag() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"language": "zh-CN", "text_normalization": "nfkc", "fold_accents": "sometimes"})
    assert err.value.problems[0] == "--fold_accents: expected true/false, got 'sometimes'"
    assert [p.split(":")[0] for p in err.value.problems[1:]] == ["--language", "--text_normalization"]
    with pytest.raises(ConfigError) as err:
        build_config({"language": "zh-CN", "text_normalization": "nfkc"})
    assert err.value.problems == [
        "--language: 'zh-CN' is not an ISO 639 language code (2-3 lower-case letters: en, de, tr, zh); "
        "for 'zh-CN' give 'zh'",
        "--text_normalization: 'nfkc' is not one of 'default', 'none'",
    ]


def test_language_settings_from_flags_and_files(tmp_path: Path) -> None:
    data = build_config({}).data
    assert (data.language, data.fold_accents, data.text_normalization, data.chars_to_ignore) == (
        "en",
        None,
        "default",
        "",
    )
    data = parse_args(["--language", "tr", "--fold_accents", "false", "--chars_to_ignore", ',?."']).data
    assert (data.language, data.fold_accents, data.chars_to_ignore) == ("tr", False, ',?."')
    path = tmp_path / "run.yaml"
    path.write_text('language: fr\nfold_accents: true\nchars_to_ignore: [",", "?", "-"]\ntext_normalization: none\n')
    data = parse_args(["--config", str(path)]).data
    assert (data.language, data.fold_accents, data.chars_to_ignore, data.text_normalization) == (
        "fr",
        True,
        ",?-",
        "none",
    )
    assert parse_args(["--config", str(path), "--fold_accents", "none"]).data.fold_accents is None  # flags win


def test_config_is_a_basic_that_imports_no_room_above_it() -> None:
    # config is imported by every room; importing training/ (or torch) from it would make circles and slow --help.
    probe = "import sys, xlsr_dist.config; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    ours = {m.split(".")[1] for m in loaded if m.startswith("xlsr_dist.")}
    assert ours == {"atomic", "config", "text"}, ours
    assert "torch" not in loaded
