"""Real multi-rank runs for tests: one OS process per rank (as srun starts them), a deadline, and on timeout an
error that names the ranks still running instead of a silent hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests._net import free_port

ROOT = Path(__file__).resolve().parent.parent


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        and not k.startswith("SLURM_")
    }
    # 2 ranks on 2 cores: one thread each, and passive waiting so spinning threads do not starve the other rank.
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


@dataclass
class RankResult:
    rank: int
    returncode: int
    output: str


class HungRanks(AssertionError):
    pass


def run_ranks(
    args: Sequence[str],
    world_size: int,
    timeout: float,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> list[RankResult]:
    """Start `python <args>` once per rank with the launcher variables set; wait for all or raise HungRanks."""
    port = free_port()
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for rank in range(world_size):
        rank_env = dict(env or base_env())
        rank_env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        log_path = log_dir / f"rank{rank}.log"
        handle = open(log_path, "w")
        logs.append((log_path, handle))
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=cwd,
                env=rank_env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    results = []
    for rank, (p, (path, handle)) in enumerate(zip(procs, logs)):
        handle.close()
        results.append(RankResult(rank, p.returncode, path.read_text()))
    if hung:
        tails = "\n".join(
            f"--- rank {r} (last lines) ---\n" + "\n".join(results[r].output.splitlines()[-15:]) for r in hung
        )
        raise HungRanks(f"rank(s) {hung} still running after {timeout:.0f} s (killed):\n{tails}")
    return results


def run_launcher(
    cmd: Sequence[str], timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A real launcher (deepspeed, torchrun) as a user types it; on timeout the error shows its last output."""
    try:
        return subprocess.run(
            list(cmd), cwd=cwd, env=env or base_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        out = out.decode() if isinstance(out, bytes) else out
        raise HungRanks(f"{' '.join(cmd)} still running after {timeout:.0f} s:\n{out[-3000:]}") from exc


def run_module(
    args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` (module first) from the repository root, as a user runs a command; output captured."""
    return run_launcher([sys.executable, "-m", *args], timeout, env=env)


def venv_bin(name: str) -> str:
    """A console script next to the running interpreter (deepspeed, torchrun)."""
    return str(Path(sys.executable).parent / name)


def start_launcher(
    cmd: Sequence[str], log_path: Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A launcher left running (one node's torchrun or launch script, started beside the others), its output in
    ``log_path``; in its own session, so a test can end it and every rank under it together."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env or base_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_launchers(procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path], timeout: float) -> list[int]:
    """Every launcher's exit status; after ``timeout`` the ones still running are killed with all their ranks, and
    HungRanks names them with their last output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if hung:
        tails = "\n".join(f"--- launcher {i} (last lines) ---\n{logs[i].read_text()[-3000:]}" for i in hung)
        raise HungRanks(f"launcher(s) {hung} still running after {timeout:.0f} s (killed):\n{tails}")
    return [int(p.returncode) for p in procs]
