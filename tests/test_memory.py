"""--retain_freed_memory: a step's freed host memory is reused by the next step instead of being unmapped and
page-faulted back in (glibc's default for blocks over 128 KiB, which cost a tiny model's CPU step 4-7 %).
Measured in fresh processes, since the setting is process-wide and cannot be undone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Each round holds what a tiny model's step does (activations and gradients of 166 KB to 2.4 MB, ~45 MB together)
# and frees it: glibc gives the heap's top back to the OS beyond twice the largest block it has unmapped, so
# without reuse every round faults its pages in again.
ROUNDS = """
import resource, sys, torch
retain = sys.argv[1] == "1"
if retain:
    from xlsr_dist import memory
    assert memory.retain_freed_memory()
torch.zeros(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    held = [torch.ones(n) for n in (41472, 611760, 147456, 41472, 295000) * 8]
    del held
for _ in range(3):  # warm-up: the first allocation of each size faults in any case
    step()
before = faults()
for _ in range(50):
    step()
print(faults() - before)
"""


def _faults_per_round(retain: bool, env: dict[str, str] | None = None) -> float:
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, "1" if retain else "0"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.split()[-1]) / 50


def test_retained_memory_is_reused_without_page_faults() -> None:
    default = _faults_per_round(retain=False)
    retained = _faults_per_round(retain=True)
    print(f"page faults per round: glibc default {default:.0f}, retained {retained:.1f}")
    # Measured: 7000-8500 faults (~30 MB of fresh 4 KiB pages) per round by default; reused heap memory is mapped.
    assert default > 1000
    assert retained < default / 5


def test_the_users_glibc_settings_win() -> None:
    code = "from xlsr_dist import memory; print(memory.retain_freed_memory())"
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_flag_is_on_by_default_and_can_be_turned_off(value: str) -> None:
    from xlsr_dist.config import parse_args

    assert parse_args(["--train_data", "demo", "--eval_data", "demo"]).train.retain_freed_memory is True
    cfg = parse_args(["--train_data", "demo", "--eval_data", "demo", "--retain_freed_memory", value])
    assert cfg.train.retain_freed_memory is (value == "true")
