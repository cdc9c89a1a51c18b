"""slurm/train.sbatch hands XLSR_ARGS to the ranks word by word and never globs them. The batch script runs as
SLURM would run it inside an allocation (its variables set), with srun recorded: the real srun is exercised in
tests/test_slurm.py."""

from __future__ import annotations

import sys
from pathlib import Path

from tests._launchers import recorded_calls, recording_command, run_script, script_env


def test_xlsr_args_are_split_on_whitespace_and_never_globbed(tmp_path: Path) -> None:
    # A submit directory where `exp*`, `a?c` and `[ab]` would each match files.
    submit_dir = tmp_path / "repo"
    (submit_dir / "xlsr_dist").mkdir(parents=True)
    for name in ("exp1", "exp2", "abc", "a", "b"):
        (submit_dir / name).write_text("")
    bin_dir = tmp_path / "bin"
    recording_command(bin_dir, "srun")
    env = script_env(
        tmp_path / "home",
        bin_dir,
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_JOB_NODELIST="node-a",
        MASTER_ADDR="127.0.0.1",
        XLSR_ROOT=str(submit_dir),
        XLSR_PYTHON=sys.executable,
        XLSR_ARGS="--run_name exp*   --tags a?c\t[ab]\n--max_steps 5",
    )
    proc = run_script("slurm/train.sbatch", ["--learning_rate", "1e-4"], env, cwd=submit_dir)
    assert proc.returncode == 0, proc.stdout
    srun_calls = recorded_calls(bin_dir, "srun")
    assert len(srun_calls) == 1, srun_calls
    train_args = srun_calls[0][srun_calls[0].index("xlsr_dist.train") + 1 :]
    assert train_args == [
        "--resume_from_checkpoint",
        "latest",
        "--run_name",
        "exp*",
        "--tags",
        "a?c",
        "[ab]",
        "--max_steps",
        "5",
        "--learning_rate",
        "1e-4",
    ]
