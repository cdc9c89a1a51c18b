"""bf16 on a GPU without native bf16 is refused at start-up, through `xlsr_dist.train` itself: one message naming the
flag and what to use instead, exit status 2, no traceback, nothing written. The machine answers like one CUDA GPU
(tests/_fake_cuda_train.py: only torch.cuda's answers are faked, the rest of start-up is the real one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests._dist import ROOT, base_env
from tests._runs import tiny_flags

V100 = "Tesla V100-SXM2-32GB"


def _start(tmp_path: Path, device_name: str, native_bf16: bool, **flags: str) -> subprocess.CompletedProcess[str]:
    argv = tiny_flags(tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}", deepspeed="ds_configs/zero2_bf16.json")
    argv += [part for name, value in flags.items() for part in (f"--{name}", value)]
    return subprocess.run(
        [sys.executable, "tests/_fake_cuda_train.py", "--device_name", device_name, "--native_bf16"]
        + [str(int(native_bf16)), "--", *argv],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bf16_on_a_gpu_without_native_bf16_stops_at_start_up_with_one_message(tmp_path: Path) -> None:
    done = _start(tmp_path, V100, native_bf16=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "xlsr_dist: 1 problem(s) in the configuration:",
        f"  - --deepspeed: bf16 asked for, but {V100} has no native bf16 (torch would emulate it, several times "
        "slower than fp16); use ds_configs/zero2_amp.json (Native AMP, the card's recipe) or "
        "ds_configs/zero2_fp16.json",
    ]
    assert done.stdout == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists(), "refused before any work"


def test_bf16_on_a_gpu_with_native_bf16_passes_that_check(tmp_path: Path) -> None:
    # The same start-up on an A100 gets past the precision check; a missing data location, checked after it, is then
    # the only problem (so start-up stops before it would need the GPU it does not have).
    missing = tmp_path / "no_such_split"
    done = _start(tmp_path, "NVIDIA A100-SXM4-80GB", native_bf16=True, train_data=str(missing), eval_data=str(missing))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "native bf16" not in done.stderr
    assert str(missing) in done.stderr and "Traceback" not in done.stderr
