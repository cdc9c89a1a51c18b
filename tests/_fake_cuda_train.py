"""`python -m xlsr_dist.train` on a CPU machine that answers like one CUDA GPU, for start-up checks that depend on the
card (tests/test_bf16_startup.py): torch.cuda says a GPU is there, names it and says whether it has bf16, natively
or by emulation. Only answers are faked; nothing runs on the fake GPU (the checks stop start-up before any would).

    python tests/_fake_cuda_train.py --device_name "Tesla V100-SXM2-32GB" --native_bf16 0 -- <xlsr_dist.train flags>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from xlsr_dist import train  # noqa: E402


def fake_one_gpu(device_name: str, native_bf16: bool) -> None:
    """torch.cuda as on a machine with one GPU named ``device_name``: bf16 by emulation always (as torch reports on
    V100/T4), natively only with ``native_bf16``."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation or native_bf16

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.set_device = lambda device: None
    torch.cuda.get_device_name = lambda device=None: device_name
    torch.cuda.is_bf16_supported = is_bf16_supported


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device_name", required=True)
    parser.add_argument("--native_bf16", type=int, choices=(0, 1), required=True)
    args, rest = parser.parse_known_args()
    fake_one_gpu(args.device_name, bool(args.native_bf16))
    try:
        train.main([a for a in rest if a != "--"])
    except SystemExit as done:
        train.exit_now(done.code if isinstance(done.code, int) else 1)


if __name__ == "__main__":
    main()
