"""Elastic resume: a ZeRO-2 checkpoint saved on N ranks continues on M ranks exactly as the run that never stopped.

Real DeepSpeed ranks over gloo (tests/_elastic_script.py, one process per rank). Each run trains 6 steps on the same
global batches whatever its world size; the reference runs save at step 3 and carry on, and the resumed runs start
from that checkpoint on another world size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests._dist import run_ranks
from tests._elastic_script import TinyNet, ds_config
from xlsr_dist.training import elastic

pytestmark = pytest.mark.slow

STEPS = 6
SAVE_AT = 3
CONVERTED = "converted to a universal checkpoint"


@dataclass
class Run:
    losses: dict[int, float]
    lrs: dict[int, float]
    output: str
    resumed: dict | None
    frozen_sum: float | None


def _train(out: Path, world_size: int, *flags: str, name: str) -> Run:
    results = run_ranks(
        ["-m", "tests._elastic_script", "--out", str(out), "--steps", str(STEPS), *flags],
        world_size,
        timeout=300,
        log_dir=out / "logs" / name,
    )
    for r in results:
        assert r.returncode == 0, f"{name}: rank {r.rank} failed:\n" + "\n".join(r.output.splitlines()[-30:])
    output = results[0].output
    losses, lrs, resumed, frozen_sum = {}, {}, None, None
    for line in output.splitlines():
        if line.startswith("STEP "):
            _, step, loss, lr = line.split()
            losses[int(step)], lrs[int(step)] = float(loss), float(lr)
        elif line.startswith("RESUMED "):
            resumed = json.loads(line[len("RESUMED ") :])
        elif line.startswith("FROZEN_SUM "):
            frozen_sum = float(line.split()[1])
    return Run(losses, lrs, output, resumed, frozen_sum)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Run, Path]]:
    """Uninterrupted runs, one per (world size, precision) asked for, each saving at step 3: (run, checkpoint)."""
    cache: dict[tuple[int, str], tuple[Run, Path]] = {}

    def get(world_size: int, precision: str = "fp32") -> tuple[Run, Path]:
        if (world_size, precision) not in cache:
            out = tmp_path_factory.mktemp(f"ref{world_size}{precision}")
            run = _train(out, world_size, "--save_at", str(SAVE_AT), "--precision", precision, name=f"ref{world_size}")
            cache[(world_size, precision)] = (run, out / "checkpoints" / f"step-{SAVE_AT:07d}")
        return cache[(world_size, precision)]

    return get


def _resume(ckpt: Path, world_size: int, tmp: Path, *flags: str, precision: str = "fp32") -> Run:
    return _train(tmp, world_size, "--resume", str(ckpt), "--precision", precision, *flags, name=f"resume{world_size}")


def _assert_continues(resumed: Run, uninterrupted: Run, rel: float, saved_at: int = SAVE_AT) -> None:
    assert sorted(resumed.losses) == list(range(saved_at + 1, STEPS + 1))
    for step, loss in resumed.losses.items():
        expected = uninterrupted.losses[step]
        assert abs(loss - expected) <= rel * abs(expected), (step, loss, expected, resumed.losses, uninterrupted.losses)
    # Whatever the checkpoint holds besides the optimizer partitions came back too.
    state = resumed.resumed
    assert state is not None and state["universal"] is True
    assert state["global_steps"] == saved_at
    assert state["lr"] == uninterrupted.lrs[saved_at]
    assert state["client"] == {"step": saved_at, "note": "client state survives"}
    assert state["offset"] == 0.5, "a buffer was not restored"
    assert state["frozen_sum"] == uninterrupted.frozen_sum, "a frozen parameter was not restored"


def test_2_ranks_resume_on_1_then_again_without_converting(
    reference: Callable[..., tuple[Run, Path]], tmp_path: Path
) -> None:
    """... and the second resumed run's checkpoint, saved on 1 rank, resumes on 2."""
    uninterrupted, ckpt = reference(2)
    first = _resume(ckpt, 1, tmp_path / "a")
    _assert_continues(first, uninterrupted, rel=1e-5)
    assert "saved on 2 rank(s), resuming on 1: " + CONVERTED in first.output
    # A conversion, even one whose result were dropped, writes a temporary directory beside the universal one.
    converted_at = (ckpt.stat().st_mtime_ns, elastic.universal_dir(ckpt).stat().st_mtime_ns)

    second = _resume(ckpt, 1, tmp_path / "b", "--save_at", "5")
    _assert_continues(second, uninterrupted, rel=1e-5)
    assert CONVERTED not in second.output
    assert (ckpt.stat().st_mtime_ns, elastic.universal_dir(ckpt).stat().st_mtime_ns) == converted_at

    third = _resume(tmp_path / "b" / "checkpoints" / "step-0000005", 2, tmp_path / "c")
    _assert_continues(third, uninterrupted, rel=1e-5, saved_at=5)
    assert "saved on 1 rank(s), resuming on 2: " + CONVERTED in third.output


def test_2_ranks_resume_on_4(reference: Callable[..., tuple[Run, Path]], tmp_path: Path) -> None:
    uninterrupted, ckpt = reference(2)
    _assert_continues(_resume(ckpt, 4, tmp_path), uninterrupted, rel=1e-5)


def test_4_ranks_resume_on_2(reference: Callable[..., tuple[Run, Path]], tmp_path: Path) -> None:
    uninterrupted, ckpt = reference(4)
    resumed = _resume(ckpt, 2, tmp_path)
    _assert_continues(resumed, uninterrupted, rel=1e-5)
    assert "saved on 4 rank(s), resuming on 2: " + CONVERTED in resumed.output


def test_bf16_2_ranks_resume_on_1(reference: Callable[..., tuple[Run, Path]], tmp_path: Path) -> None:
    uninterrupted, ckpt = reference(2, "bf16")
    resumed = _resume(ckpt, 1, tmp_path, precision="bf16")
    # The first step after resuming runs on the restored weights: equal. Later steps differ by bf16 rounding of
    # gradients reduced in another order (1 rank instead of 2), as two uninterrupted runs on 1 and 2 ranks do.
    first = SAVE_AT + 1
    assert resumed.losses[first] == pytest.approx(uninterrupted.losses[first], rel=1e-6)
    _assert_continues(resumed, uninterrupted, rel=1e-3)


def test_same_world_size_resumes_natively(reference: Callable[..., tuple[Run, Path]]) -> None:
    _, ckpt = reference(2)
    plan = elastic.prepare_resume(ckpt, ds_config(2, "fp32"), 2, True, lambda: None)
    assert (plan.universal, plan.load_dir, plan.tag) == (False, ckpt.parent, ckpt.name)
    assert plan.configure(ds_config(2, "fp32")) == ds_config(2, "fp32")


def test_what_cannot_carry_over_is_named_at_start_up(
    reference: Callable[..., tuple[Run, Path]], tmp_path: Path
) -> None:
    _, saved = reference(2)
    ckpt = tmp_path / saved.name
    shutil.copytree(saved, ckpt, ignore=shutil.ignore_patterns(elastic.UNIVERSAL))

    changed = ds_config(1, "bf16")
    changed["train_batch_size"] = 16
    changed["optimizer"]["params"]["lr"] = 0.02
    with pytest.raises(elastic.ElasticResumeError) as error:
        elastic.prepare_resume(ckpt, changed, 1, True, lambda: None)
    message = str(error.value)
    assert "saved in fp32 and this run trains in bf16" in message
    assert "train_batch_size was 8 and is now 16 (--global_batch_size)" in message
    assert "optimizer.params.lr was 0.01 and is now 0.02 (--learning_rate)" in message

    other = TinyNet()
    other.head = torch.nn.Linear(29, 7)
    with pytest.raises(elastic.ElasticResumeError, match=r"head.weight \(5, 29\) -> \(7, 29\)"):
        elastic.check_model(ckpt, other)
    unfrozen = TinyNet()
    unfrozen.frozen.requires_grad_(True)
    with pytest.raises(elastic.ElasticResumeError, match="frozen then, trained now: frozen.bias, frozen.weight"):
        elastic.check_model(ckpt, unfrozen)

    (ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(elastic.ElasticResumeError, match=r"partition\(s\) of rank\(s\) \[1\] of the 2"):
        elastic.prepare_resume(ckpt, ds_config(1, "fp32"), 1, True, lambda: None)
    assert not elastic.universal_dir(ckpt).exists()


def test_failed_conversion_is_named_and_leaves_nothing(
    reference: Callable[..., tuple[Run, Path]], tmp_path: Path
) -> None:
    _, saved = reference(2)
    ckpt = tmp_path / saved.name
    shutil.copytree(saved, ckpt, ignore=shutil.ignore_patterns(elastic.UNIVERSAL))
    partition = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    partition.write_bytes(partition.read_bytes()[:1000])
    with pytest.raises(elastic.ElasticResumeError, match="converting it to a universal checkpoint failed"):
        elastic.prepare_resume(ckpt, ds_config(1, "fp32"), 1, True, lambda: None)
    assert not elastic.universal_dir(ckpt).exists()
    assert not list(ckpt.glob(".universal*")), "a half-written conversion was left behind"
