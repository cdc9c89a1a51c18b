"""Precision modes on real DeepSpeed ZeRO-2 ranks (gloo, CPU): the card's "Native AMP" (zero2_amp) trains like a
plain torch AMP loop, and in every loss-scaled mode an overflow on one rank is skipped on all ranks with the loss
scale lowered, observable through xlsr_dist.precision."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests._dist import ROOT, run_ranks
from xlsr_dist import precision

RANK_SCRIPT = str(ROOT / "tests/_precision_rank.py")
OVERFLOW_STEP = 2


def _run(mode: str, world_size: int, out: Path, overflow_rank: int = 0) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    args = [RANK_SCRIPT, "--mode", mode, "--out_dir", str(out), "--overflow_step", str(OVERFLOW_STEP)]
    args += ["--overflow_rank", str(overflow_rank)]
    if mode == "torch_amp":
        results = run_ranks(args, world_size=1, timeout=120, log_dir=out)
    else:
        results = run_ranks(args, world_size=world_size, timeout=300, log_dir=out)
    for r in results:
        assert r.returncode == 0, r.output[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.fixture(scope="module")
def torch_amp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run("torch_amp", 1, tmp_path_factory.mktemp("torch_amp"))[0]


def _max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def test_shipped_configs_name_their_mode() -> None:
    expected = {"zero2_amp": "amp", "zero2_fp16": "fp16", "zero2_bf16": "bf16", "zero2_fp32": "fp32"}
    for name, mode in expected.items():
        ds = json.loads((ROOT / f"ds_configs/{name}.json").read_text())
        assert precision.mode(ds) == mode
        assert precision.problems(ds) == []
        assert ds["zero_optimization"]["stage"] == 2
    amp = json.loads((ROOT / "ds_configs/zero2_amp.json").read_text())
    # Gradients are reduced in fp32 as DDP does under torch AMP, not in fp16 (DeepSpeed's default for Linear/Conv).
    assert amp["torch_autocast"]["lower_precision_safe_modules"] == []
    assert precision.input_dtype("amp") == torch.float32  # weights stay fp32; autocast casts inside the forward


def test_conflicting_precisions_are_named() -> None:
    ds = {"fp16": {"enabled": True}, "torch_autocast": {"enabled": True, "dtype": "float16"}}
    assert precision.problems(ds) == ["--deepspeed: fp16 and torch_autocast are all enabled; enable one precision"]
    bf16_autocast = {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}
    assert precision.mode(bf16_autocast) == "bf16"
    assert "torch_autocast.dtype must be float16" in precision.problems(bf16_autocast)[0]


def test_gradscaler_policy_backs_off_at_once_and_grows_after_the_interval() -> None:
    policy = precision.GradScalerPolicy(2.0**16, 2.0, 0.5, growth_interval=3, min_scale=1.0)
    policy.update_scale(overflow=True)  # no hysteresis: the first overflow halves the scale, as GradScaler does
    assert policy.loss_scale == 2.0**15
    for _ in range(2):
        policy.update_scale(overflow=False)
    assert policy.loss_scale == 2.0**15
    policy.update_scale(overflow=False)
    assert policy.loss_scale == 2.0**16
    policy.update_scale(overflow=False)
    policy.update_scale(overflow=True)  # an overflow restarts the count of clean steps
    for _ in range(2):
        policy.update_scale(overflow=False)
    assert policy.loss_scale == 2.0**15
    floor = precision.GradScalerPolicy(2.0, 2.0, 0.5, growth_interval=3, min_scale=1.0)
    for _ in range(3):
        floor.update_scale(overflow=True)
    assert floor.loss_scale == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_native_amp_on_zero2_trains_like_torch_amp(world_size: int, torch_amp: dict[str, Any], tmp_path: Path) -> None:
    # With 2 ranks the overflow is on rank 1 only: rank 0's gradients are finite and it must skip all the same.
    ranks = _run("amp", world_size, tmp_path, overflow_rank=world_size - 1)
    for result in ranks:
        assert result["mode"] == "amp" and result["repaired"] is True
        assert result["weight_dtype"] == "torch.float32"
        assert {s["output_dtype"] for s in result["steps"]} == {"torch.float16"}
        assert [s["scale_after"] for s in result["steps"]] == [s["scale_after"] for s in torch_amp["steps"]]
        assert [s["applied"] for s in result["steps"]] == [s["applied"] for s in torch_amp["steps"]]
        assert [s["skipped_steps"] for s in result["steps"]] == [0, 0, 1, 1, 1, 1]
        assert [s["params_changed"] for s in result["steps"]] == [True, True, False, True, True, True]
        for ours, theirs in zip(result["steps"], torch_amp["steps"]):
            if ours["applied"]:
                assert math.isclose(ours["grad_norm"], theirs["grad_norm"], rel_tol=1e-3)
        # Weights after 5 clipped AdamW steps and a skipped one: torch AMP's, to fp16-autocast rounding.
        assert _max_abs_diff(result["params"], torch_amp["params"]) < 1e-4
    assert ranks[0]["params"] == ranks[-1]["params"]


@pytest.mark.slow
def test_deepspeed_autocast_fp16_defect_that_the_repair_works_around(torch_amp: dict[str, Any], tmp_path: Path) -> None:
    """DeepSpeed 0.19.8 without xlsr_dist.precision.repair_autocast_fp16: clipping and the reported norm use the
    *scaled* gradients and an overflow never lowers the scale. If this fails, DeepSpeed has fixed it: check that
    test_native_amp_on_zero2_trains_like_torch_amp passes without the repair and remove it."""
    (result,) = _run("amp_unrepaired", 1, tmp_path)
    assert result["repaired"] is False
    first, reference = result["steps"][0], torch_amp["steps"][0]
    assert math.isclose(first["grad_norm"], reference["grad_norm"] * first["scale_before"], rel_tol=1e-3)
    assert [s["scale_after"] for s in result["steps"]] == [2.0**16] * 6
    repaired_gap = 1e-4  # what the repaired run stays within (the test above)
    assert _max_abs_diff(result["params"], torch_amp["params"]) > 10 * repaired_gap


@pytest.mark.slow
def test_fp16_wrap_skips_an_overflow_on_every_rank_with_hysteresis(tmp_path: Path) -> None:
    ranks = _run("fp16", 2, tmp_path, overflow_rank=1)
    for result in ranks:
        assert result["mode"] == "fp16" and result["weight_dtype"] == "torch.float16"
        steps = result["steps"]
        assert [s["applied"] for s in steps] == [True, True, False, True, True, True]
        assert [s["params_changed"] for s in steps] == [True, True, False, True, True, True]
        assert steps[OVERFLOW_STEP]["skipped_steps"] == 1 and steps[-1]["skipped_steps"] == 1
        # hysteresis 2 in zero2_fp16.json: one overflow uses up the hysteresis, the scale stays.
        assert {s["scale_after"] for s in steps} == {2.0**16}
    assert ranks[0]["params"] == ranks[1]["params"]


def test_bf16_is_refused_on_gpus_that_only_emulate_it() -> None:
    problem = precision.native_bf16_problem("bf16", "cuda", native_bf16=False, device_name="Tesla V100-SXM2-32GB")
    assert problem.startswith("--deepspeed: bf16 asked for, but Tesla V100-SXM2-32GB has no native bf16")
    assert "ds_configs/zero2_amp.json" in problem and "ds_configs/zero2_fp16.json" in problem
    assert precision.native_bf16_problem("bf16", "cuda", native_bf16=True, device_name="NVIDIA A100-SXM4-80GB") == ""
    assert precision.native_bf16_problem("amp", "cuda", native_bf16=False, device_name="Tesla T4") == ""
    assert precision.native_bf16_problem("bf16", "cpu", native_bf16=False, device_name="") == ""


@pytest.mark.parametrize(
    ("mode", "expected"), [("amp", torch.float16), ("fp16", torch.float32), ("fp32", torch.float32)]
)
def test_only_amp_autocasts_the_forward_outside_the_engine(mode: str, expected: torch.dtype) -> None:
    layer = torch.nn.Linear(4, 4)
    with precision.forward_autocast(mode, torch.device("cpu")):
        assert layer(torch.randn(2, 4)).dtype == expected
