"""DeepSpeed config resolution and the learning-rate schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlsr_dist import precision
from xlsr_dist.config import ConfigError, build_config, plan_batches
from xlsr_dist.training import engine

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def _cfg(tmp_path: Path, ds: dict | None = None, **flags: object):
    if ds is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds))
        flags["deepspeed"] = str(path)
    return build_config(dict(flags))


def test_auto_keys_are_filled_from_flags_and_world(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, deepspeed="ds_configs/zero2_fp32.json", learning_rate=3e-4, max_grad_norm=0.5)
    for world, (micro, accum) in {1: (4, 2), 2: (4, 1), 4: (2, 1), 8: (1, 1)}.items():
        ds = engine.resolve_ds_config(cfg, plan_batches(8, world), CPU)
        assert ds["train_batch_size"] == 8
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (micro, accum)
        assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["gradient_clipping"] == 0.5
        assert ds["optimizer"]["params"]["betas"] == [0.9, 0.999] and ds["optimizer"]["params"]["eps"] == 1e-8
        assert ds["zero_optimization"]["stage"] == 2


def test_disagreeing_batch_keys_are_errors_not_overrides(tmp_path: Path) -> None:
    ds = json.loads((ROOT / "ds_configs/zero2_fp32.json").read_text())
    ds.update(train_batch_size=16, train_micro_batch_size_per_gpu=2)
    ds["optimizer"]["params"]["lr"] = 5e-5
    cfg = _cfg(tmp_path, ds)
    with pytest.raises(ConfigError) as err:
        engine.resolve_ds_config(cfg, plan_batches(8, 2), CPU)
    text = str(err.value)
    assert "train_batch_size is 16" in text and "--global_batch_size" in text
    assert "train_micro_batch_size_per_gpu is 2" in text
    assert "optimizer.params.lr" in text and "--learning_rate" in text


def test_agreeing_explicit_keys_are_accepted(tmp_path: Path) -> None:
    ds = json.loads((ROOT / "ds_configs/zero2_fp32.json").read_text())
    ds.update(train_batch_size=8, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1)
    cfg = _cfg(tmp_path, ds)
    assert engine.resolve_ds_config(cfg, plan_batches(8, 2), CPU)["gradient_accumulation_steps"] == 1


def test_scheduler_block_is_refused(tmp_path: Path) -> None:
    ds = json.loads((ROOT / "ds_configs/zero2_fp32.json").read_text())
    ds["scheduler"] = {"type": "WarmupDecayLR", "params": {}}
    with pytest.raises(ConfigError, match="scheduler"):
        engine.resolve_ds_config(_cfg(tmp_path, ds), plan_batches(8, 1), CPU)


def _cpu_fp16(monkeypatch: pytest.MonkeyPatch, supported: bool) -> None:
    """What DeepSpeed's CPU accelerator answers depends on the CPU (0.19.8: fp16 where oneDNN has fp16 kernels,
    AVX512-FP16/AMX); the tests fix the answer so that both cases run on any machine."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: supported)


def test_fp16_on_a_cpu_without_fp16_stops_with_the_configs_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu_fp16(monkeypatch, supported=False)
    cfg = _cfg(tmp_path)  # default: ds_configs/zero2_fp16.json
    with pytest.raises(ConfigError) as err:
        engine.resolve_ds_config(cfg, plan_batches(8, 1), CPU)
    assert "fp16" in str(err.value) and "zero2_bf16.json" in str(err.value) and "zero2_fp32.json" in str(err.value)


def test_fp16_on_a_cpu_with_fp16_keeps_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_fp16(monkeypatch, supported=True)
    ds = engine.resolve_ds_config(_cfg(tmp_path), plan_batches(8, 1), CPU)
    assert precision.mode(ds) == "fp16"


def test_shipped_configs_are_zero2_with_the_right_precision() -> None:
    for name, prec in [("zero2_fp16", "fp16"), ("zero2_bf16", "bf16"), ("zero2_fp32", "fp32")]:
        ds = json.loads((ROOT / f"ds_configs/{name}.json").read_text())
        assert precision.mode(ds) == prec
        z = ds["zero_optimization"]
        assert z["stage"] == 2 and z["overlap_comm"] and z["contiguous_gradients"]
        assert "scheduler" not in ds


SCHEDULE_SCRIPT = r"""
import json, sys, torch
from transformers import get_linear_schedule_with_warmup
from xlsr_dist.training import engine
from xlsr_dist import world
from xlsr_dist.config import build_config, plan_batches
cfg = build_config({"deepspeed": "ds_configs/zero2_fp32.json", "learning_rate": 1e-3})
ds = engine.resolve_ds_config(cfg, plan_batches(8, 1), torch.device("cpu"))
world.init(world.World(), torch.device("cpu"), 60)
model = torch.nn.Linear(4, 2)
model_engine = engine.initialize(model, ds, warmup_steps=10, total_steps=25)
ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
ref = get_linear_schedule_with_warmup(ref_opt, 10, 25)
out = []
for step in range(25):
    for _ in range(2):  # gradient accumulation 2: the schedule moves per optimizer step, not per micro-batch
        loss = model_engine(torch.randn(4, 4)).pow(2).mean(); model_engine.backward(loss); model_engine.step()
    ref_opt.step(); ref.step()
    out.append((engine.current_lr(model_engine), ref.get_last_lr()[0]))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_deepspeed_engine_follows_hf_schedule_per_optimizer_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCHEDULE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = json.loads(proc.stdout.strip().splitlines()[-1])
    for ours, ref in pairs:
        assert ours == pytest.approx(ref, abs=1e-15)
