"""A checkpoint is loaded without running code of its own: a file whose pickle would run code (a crafted
mp_rank_00_model_states.pt handed to transcribe/export, or an optimizer partition a resume would read) is refused with
a clear CheckpointError and the code never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests._crafted import crafted_run
from tests._dist import run_module
from xlsr_dist.model import load_hf_model
from xlsr_dist.training import checkpoint


@pytest.mark.parametrize("bad_file", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_the_crafted_file_does_run_code_when_loaded_the_unsafe_way(tmp_path: Path, bad_file: str) -> None:
    # The bait is real: without weights_only, loading it runs the code.
    ckpt, marker = crafted_run(tmp_path, bad_file)
    torch.load(ckpt / bad_file, weights_only=False)
    assert marker.read_text() == "code ran"


def test_transcribe_and_export_loading_refuses_it_and_no_code_runs(tmp_path: Path) -> None:
    ckpt, marker = crafted_run(tmp_path, "mp_rank_00_model_states.pt")
    with pytest.raises(checkpoint.CheckpointError, match="refused: it holds objects other than tensors") as err:
        load_hf_model(ckpt)
    assert "mp_rank_00_model_states.pt" in str(err.value) and "(it would call exec)" in str(err.value)
    assert not marker.exists()
    # The same through the command line: one message, status 2, no traceback.
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    done = run_module(
        ["xlsr_dist.transcribe", "--model", str(ckpt), str(audio)],
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "refused: it holds objects other than tensors" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_a_resume_checks_every_file_before_deepspeed_reads_any(tmp_path: Path) -> None:
    ckpt, marker = crafted_run(tmp_path, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(checkpoint.CheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: refused"):
        checkpoint.verify_loadable(ckpt)
    assert not marker.exists()


def test_a_plain_checkpoint_and_deepspeeds_state_classes_load(tmp_path: Path) -> None:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    ckpt, _ = crafted_run(tmp_path, "")
    # What DeepSpeed 0.19's ZeRO-2 optimizer partition pickles besides tensors (fp16: a dynamic loss scaler).
    torch.save(
        {
            "optimizer_state_dict": {
                "loss_scaler": DynamicLossScaler(2.0**16, 1000, 1, 2, False, True, torch.float16),
                "zero_stage": ZeroStageEnum.gradients,
                "param_slice_mappings": [{"w": fragment_address(numel=2, start=0)}],
            }
        },
        ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    checkpoint.verify_loadable(ckpt)
    state = checkpoint.safe_load(ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
    assert state["loss_scaler"].cur_scale == 2.0**16 and state["zero_stage"] is ZeroStageEnum.gradients
    assert torch.equal(checkpoint.safe_load(ckpt / "mp_rank_00_model_states.pt")["module"]["w"], torch.zeros(2))


def test_a_truncated_file_is_a_checkpoint_error_not_a_traceback(tmp_path: Path) -> None:
    ckpt, _ = crafted_run(tmp_path, "")
    model_states = ckpt / "mp_rank_00_model_states.pt"
    model_states.write_bytes(model_states.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint file"):
        checkpoint.verify_loadable(ckpt)
    assert os.path.getsize(model_states) == 100
