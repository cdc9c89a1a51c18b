"""A checkpoint crafted to run code when unpickled, for the tests that show xlsr_dist never loads one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xlsr_dist.model import tiny_config
from xlsr_dist.training import checkpoint


class RunsCode:
    """Unpickling this object calls exec(): what a crafted checkpoint does with os.system. Here it only writes
    ``marker``, so a test can tell whether the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def crafted_run(root: Path, bad_file: str) -> tuple[Path, Path]:
    """A run --output_dir whose one complete checkpoint holds a crafted ``bad_file`` beside plain DeepSpeed-shaped
    files; returns (checkpoint dir, marker path the crafted pickle would write)."""
    marker = root / "code-ran"
    out = root / "run"
    tiny_config(vocab_size=8, pad_token_id=0).save_pretrained(out / checkpoint.MODEL_CONFIG)
    ckpt = out / checkpoint.CHECKPOINTS / checkpoint.tag_for(4)
    ckpt.mkdir(parents=True)
    plain = {
        "mp_rank_00_model_states.pt": {"module": {"w": torch.zeros(2)}, "global_steps": 4},
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {"zero_stage": 2}},
    }
    for name, state in plain.items():
        payload = {**state, "extra": RunsCode(marker)} if name == bad_file else state
        torch.save(payload, ckpt / name)
    (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 4}))
    return ckpt, marker
