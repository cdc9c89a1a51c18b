"""Running the launch scripts (launch/*.sh, slurm/train.sbatch) as a user would, with the one program they hand off
to that cannot run here (pdsh to other nodes, srun outside an allocation) replaced by a recorder on PATH that keeps
every argument it was called with: what `ps` would show on every node."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests._dist import ROOT


def recording_command(bin_dir: Path, name: str, then: str = "exit 0") -> None:
    """An executable ``bin_dir/name`` that stores each call's arguments, then runs the shell code ``then``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = bin_dir / f"{name}.calls"
    calls.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(
        f'#!/bin/bash\nprintf \'%s\\0\' "$@" > "$(mktemp {shlex.quote(str(calls))}/call.XXXXXX)"\n{then}\n'
    )
    script.chmod(0o755)


def recorded_calls(bin_dir: Path, name: str) -> list[list[str]]:
    """The argument lists ``bin_dir/name`` was called with (one per call)."""
    calls = bin_dir / f"{name}.calls"
    if not calls.is_dir():
        return []
    return [f.read_text().split("\0")[:-1] for f in sorted(calls.iterdir())]


def script_env(home: Path, bin_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without MLflow/SLURM settings of its own, the recorders and the venv first on PATH, and
    ``home`` as HOME (so no ~/.deepspeed_env or ~/.mlflow/credentials of the machine is read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "SLURM_", "DS_"))}
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent  # deepspeed, torchrun, mlflow of the interpreter running the tests
    env.update(HOME=str(home), PATH=f"{bin_dir}:{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}")
    env.update(extra)
    return env


def run_script(
    script: str, args: list[str], env: Mapping[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``bash script args`` (``script`` relative to the repository root), stdout and stderr together."""
    return subprocess.run(
        ["bash", str(ROOT / script), *args],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
