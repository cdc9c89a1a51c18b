"""Start one benchmark run: one OS process per rank with the launcher variables set (as srun or
tests/_dist.run_ranks start them), the same way for both sides; a deadline; logs per rank."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class RankOutcome:
    rank: int
    returncode: int | None
    log: Path


class RunFailed(RuntimeError):
    """A rank exited non-zero or the run timed out; ``outcomes`` says how each rank ended (a caller may still use
    what the ranks wrote before, e.g. records of finished steps)."""

    def __init__(self, message: str, outcomes: list[RankOutcome], timed_out: bool) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.timed_out = timed_out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(
    base: dict[str, str], rank: int, world_size: int, port: int, threads: int, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # One thread per rank by default and passive waiting: ranks (and other users) share few cores, and a
        # spinning OpenMP pool would steal them from the rank that is working.
        OMP_NUM_THREADS=str(threads),
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    env.update(extra)
    return env


def run_ranks(
    cmd: Sequence[str],
    world_size: int,
    run_dir: Path,
    timeout_s: float,
    threads: int,
    extra_env: dict[str, str],
    cwd: Path,
    grace_s: float = 20.0,
) -> list[RankOutcome]:
    """Run ``cmd`` once per rank; raise RunFailed (with each failing rank's last lines) on error or timeout.

    After one rank fails the others get ``grace_s`` to end by themselves before they are killed: a rank that aborts
    in its teardown, after its last step, leaves peers that are finishing too, and their records are worth keeping.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[tuple[subprocess.Popen[bytes], Path, object]] = []
    for rank in range(world_size):
        log = run_dir / f"rank{rank}.log"
        handle = open(log, "wb")
        env = rank_env(
            dict(os.environ),
            rank,
            world_size,
            port,
            threads,
            {k: v.replace("{rank}", str(rank)) for k, v in extra_env.items()},
        )
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, *cmd],
                    cwd=cwd,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
                handle,
            )
        )
    deadline = time.monotonic() + timeout_s
    failed_early = False
    while time.monotonic() < deadline and any(p.poll() is None for p, _, _ in procs):
        # One dead rank leaves the others waiting in a collective until their timeout: stop them soon.
        if not failed_early and any(p.poll() not in (None, 0) for p, _, _ in procs):
            failed_early = True
            deadline = min(deadline, time.monotonic() + grace_s)
        time.sleep(0.2)
    timed_out = any(p.poll() is None for p, _, _ in procs)
    for p, _, _ in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    outcomes = []
    for rank, (p, log, handle) in enumerate(procs):
        handle.close()  # type: ignore[attr-defined]
        outcomes.append(RankOutcome(rank, p.returncode, log))
    bad = [o for o in outcomes if o.returncode != 0]
    if bad:
        why = "timed out" if timed_out and not failed_early else "failed"
        tails = "\n".join(
            f"--- rank {o.rank} (exit {o.returncode}), {o.log} ---\n"
            + "\n".join(o.log.read_text(errors="replace").splitlines()[-25:])
            for o in bad
        )
        raise RunFailed(f"{' '.join(cmd[:1])} {why} after {timeout_s:.0f} s limit:\n{tails}", outcomes, timed_out)
    return outcomes
