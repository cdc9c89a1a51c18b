"""Every user error, made as a new user would make it on the command line, ends with one message naming what to
change, exit status 2 and no traceback, before any process group or model exists."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests._crafted import crafted_run
from tests._dist import ROOT, base_env, run_ranks
from tests._runs import tiny_flags

pytestmark = pytest.mark.slow  # each case starts the real command (torch, DeepSpeed imports: seconds)

# `python -m xlsr_dist.train` on a machine that sees ``GPUS`` GPUs: the one part of the machine this CPU cannot
# provide, faked as torch itself reports it; everything after torch.cuda's answer is the real command.
TRAIN_SEEING_GPUS = r"""
import sys, torch
gpus = int(sys.argv.pop(1))
torch.cuda.is_available = lambda: gpus > 0
torch.cuda.device_count = lambda: gpus
from xlsr_dist.train import cli
sys.argv[0] = "xlsr_dist.train"
cli()
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=base_env(**env), capture_output=True, text=True, timeout=300
    )


def _train(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "xlsr_dist.train", *tiny_flags(tmp_path / "out", "", report_to="none"), *flags], **env)


def _one_message(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command failed as a user error: status 2, no traceback, one message holding every ``expected`` part."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    messages = [line for line in proc.stderr.splitlines() if line.startswith(("xlsr_dist", "prepare:"))]
    assert len(messages) == 1, proc.stderr
    for part in expected:
        assert part in proc.stderr, (part, proc.stderr)
    return proc.stderr


def test_parse_errors_and_invalid_values_are_reported_together(tmp_path: Path) -> None:
    proc = _train(tmp_path, "--learning_rate", "-1", "--warmup_steps", "abc")
    _one_message(
        proc,
        "2 problem(s) in the configuration",
        "--warmup_steps: expected an integer, got 'abc'",
        "--learning_rate: -1.0 must be > 0",
    )
    assert not (tmp_path / "out").exists()


def test_missing_data_locations_name_both_flags(tmp_path: Path) -> None:
    empty = tmp_path / "no-shards-here"
    empty.mkdir()
    proc = _train(tmp_path, "--train_data", "/nonexistent", "--eval_data", str(empty))
    _one_message(
        proc,
        "--train_data /nonexistent: no such file or directory",
        f"--eval_data {empty}: no shards (shard-NNNNN-of-NNNNN.parquet)",
        "python -m xlsr_dist.prepare",
    )
    assert not (tmp_path / "out").exists()


def test_missing_weights_say_how_to_provide_them_and_nothing_else(tmp_path: Path) -> None:
    # The README's GPU command on a machine without the weights cached and without internet.
    empty_cache = tmp_path / "hf"
    empty_cache.mkdir()
    proc = _run(
        ["-m", "xlsr_dist.train", "--train_data", "demo", "--deepspeed", "ds_configs/zero2_fp32.json"],
        HF_HUB_OFFLINE="1",
        HF_HOME=str(empty_cache),
        HF_HUB_CACHE=str(empty_cache / "hub"),
        TRANSFORMERS_CACHE=str(empty_cache / "hub"),
    )
    stderr = _one_message(
        proc,
        "--model_name_or_path facebook/wav2vec2-large-xlsr-53: not in the Hugging Face cache and HF_HUB_OFFLINE",
        "Provide the weights of 'facebook/wav2vec2-large-xlsr-53'",
        "--architecture xlsr-53",
    )
    assert "LocalEntryNotFoundError" not in stderr and stderr.count("Provide the weights") == 1
    # A directory that holds no checkpoint is named as such.
    proc = _train(tmp_path, "--architecture", "", "--model_name_or_path", str(empty_cache))
    _one_message(proc, f"--model_name_or_path {empty_cache}: the directory holds no wav2vec2 checkpoint")


def test_an_unusable_resume_checkpoint_is_named(tmp_path: Path) -> None:
    _one_message(
        _train(tmp_path, "--resume_from_checkpoint", "/not/a/checkpoint"),
        "--resume_from_checkpoint /not/a/checkpoint: no such directory",
        "'latest'",
    )
    incomplete = tmp_path / "run" / "checkpoints" / "step-0000004"
    incomplete.mkdir(parents=True)
    _one_message(
        _train(tmp_path, "--resume_from_checkpoint", str(incomplete)),
        f"--resume_from_checkpoint {incomplete}: not a complete checkpoint",
    )


def test_a_checkpoint_that_would_run_code_is_refused_before_deepspeed_reads_it(tmp_path: Path) -> None:
    ckpt, marker = crafted_run(tmp_path, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    _one_message(
        _train(tmp_path, "--resume_from_checkpoint", str(ckpt)),
        f"--resume_from_checkpoint {ckpt}: ",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt: refused",
        "(it would call exec)",
    )
    assert not marker.exists()


def test_prepare_input_errors_are_one_line(tmp_path: Path) -> None:
    proc = _run(["-m", "xlsr_dist.prepare", "--output", str(tmp_path / "shards")])
    _one_message(proc, "prepare: error: the following arguments are required: --input")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # not argparse's usage text
    proc = _run(["-m", "xlsr_dist.prepare", "--input", "/nonexistent", "--output", str(tmp_path / "shards")])
    _one_message(proc, "--input /nonexistent: no such file or directory")
    table = tmp_path / "all-bad.tsv"
    table.write_text("path\tsentence\nmissing.wav\t\n")
    proc = _run(["-m", "xlsr_dist.prepare", "--input", str(table), "--output", str(tmp_path / "shards")])
    _one_message(
        proc,
        f"--input {table}: no usable utterances: split train: none of its 1 entries (1 empty transcript)",
        str(tmp_path / "shards" / "train" / "report.json"),
    )


def test_two_ranks_with_the_same_problem_print_it_once(tmp_path: Path) -> None:
    results = run_ranks(
        [
            "-m",
            "xlsr_dist.train",
            *tiny_flags(tmp_path / "out", "", report_to="none", train_data="/nonexistent", eval_data="/nonexistent"),
        ],
        world_size=2,
        timeout=120,
        log_dir=tmp_path / "logs",
    )
    assert [r.returncode for r in results] == [2, 2]
    assert "--train_data /nonexistent: no such file or directory" in results[0].output
    assert results[1].output.strip() == "", "rank 1 sees what rank 0 sees: rank 0 says it"
    assert all("Traceback" not in r.output for r in results)


def _rank(rank: int, local_rank: int, local_world: int, world: int = 4) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world),
        "WORLD_SIZE": str(world),
    }


def test_a_gpu_layout_error_rank_0_cannot_see_is_printed_by_the_rank_that_sees_it(tmp_path: Path) -> None:
    flags = tiny_flags(tmp_path / "out", "", report_to="none")
    host = socket.gethostname()
    # Node 1 runs 3 ranks but sees 2 GPUs; node 0 (rank 0) is fine and cannot know. Node 1's first rank says it ...
    first_of_node = _run(["-c", TRAIN_SEEING_GPUS, "2", *flags], **_rank(1, 0, 3))
    _one_message(first_of_node, f"xlsr_dist: rank 1 on {host}: ", "GPU layout: rank 1 has LOCAL_RANK=0 of 3 rank(s)")
    # ... once: the node's other ranks exit with the same status, silently.
    second_of_node = _run(["-c", TRAIN_SEEING_GPUS, "2", *flags], **_rank(2, 1, 3))
    assert second_of_node.returncode == 2 and second_of_node.stderr.strip() == "", second_of_node.stderr
    # A LOCAL_RANK beyond its node's rank count is known to that rank alone: it says so itself.
    beyond = _run(["-c", TRAIN_SEEING_GPUS, "2", *flags], **_rank(3, 2, 2))
    _one_message(beyond, f"xlsr_dist: rank 3 on {host}: ", "LOCAL_RANK=2 of 2 rank(s) on its node but sees 2 GPUs")
    assert not (tmp_path / "out").exists()
