"""SIGTERM, as Kubernetes, torchrun's elastic agent and most schedulers send it, to a 2-rank run started by a real
launcher: every rank saves one complete checkpoint at the same step and reports exit status 75, the MLflow run ends
KILLED, and `--resume_from_checkpoint latest` continues with the uninterrupted run's losses (fp32, rel 1e-5) in the
same MLflow run.

What each launcher does with SIGTERM (torch 2.13, DeepSpeed 0.19):
- torchrun's elastic agent sends it on to each worker's process group and exits 1 itself (its SignalException),
  whatever the workers returned (tested here); it SIGKILLs workers still running after 30 s (``--shutdown_timeout``;
  from its source).
- ``deepspeed`` (the runner) forwards nothing on one node (it installs handlers only for multi-node pdsh): signalled
  alone it dies and its child ``deepspeed.launcher.launch`` and the ranks train on (tested here). So the signal must
  reach the launcher's process group, as SLURM's scancel, ``kill -TERM -- -PGID``, ``dumb-init`` or ``tini -g`` send
  it (tested with killpg). ``launch.py`` itself passes SIGTERM to each rank's process tree, SIGKILLs it after 30 s and
  exits 1 (from its source).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests._dist import ROOT, base_env, venv_bin
from tests._net import free_port
from tests._resume import STEPS, Reference, assert_mlflow_run_continued, loss_history, train
from tests._runs import metrics_by_step, mlflow_runs, tiny_flags

pytestmark = pytest.mark.slow

MARKER = "COMPLETE.json"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The same 2-rank training, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    train(root / "out", root / "mlflow.db", 2, root / "logs")
    return Reference(root / "out", root / "mlflow.db", metrics_by_step(root / "out", "loss"))


def _last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return max((json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()), default=0)


def _wait_for_step(out: Path, step: int, alive: subprocess.Popen[bytes] | int, log: Path, timeout: float = 420) -> int:
    """Until ``step`` is logged; fails if the launcher (a Popen) or its process group (an int) ends first."""
    deadline = time.monotonic() + timeout
    while _last_step(out) < step:
        ended = alive.poll() is not None if isinstance(alive, subprocess.Popen) else not _group_alive(alive)
        assert not ended, f"the run ended before step {step}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"step {step} not logged after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    return _last_step(out)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        assert time.monotonic() < deadline, f"processes still running {timeout:.0f} s after SIGTERM:\n{log.read_text()}"
        time.sleep(0.2)


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The launcher in its own process group (its pid is the group id), as a scheduler starts a job."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=base_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def _check_stopped_and_resume(out: Path, db: Path, log: str, signalled_at: int, reference: Reference) -> None:
    """Both ranks stopped at one step k >= the step logged when the signal went, saved a complete checkpoint there,
    said status 75; MLflow holds the KILLED run's steps 1..k; the resume logs k+1..STEPS into that run."""
    stops = [line for line in log.splitlines() if "stop requested (SIGTERM)" in line]
    assert len(stops) == 2, f"both ranks must report the stop:\n{log[-4000:]}"
    k = int(stops[0].split("checkpoint saved at step ")[1].split(";")[0])
    assert all(f"checkpoint saved at step {k}; exiting with status 75" in line for line in stops), stops
    assert signalled_at <= k < STEPS, (signalled_at, k)
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*") if (p / MARKER).is_file())
    assert done[-1] == f"step-{k:07d}", done
    assert sorted(p.name for p in (out / "checkpoints" / f"step-{k:07d}" / "rng_state").iterdir()) == [
        "rank_00000.pt",
        "rank_00001.pt",
    ], "every rank's part of the checkpoint"
    assert not (out / "final").exists()
    uri = f"sqlite:///{db}"
    (run,) = mlflow_runs(uri)
    assert run.info.status == "KILLED"
    assert [s for s, _ in loss_history(uri, run.info.run_id)] == list(range(1, k + 1))

    output = train(out, db, 2, out.parent / "resume-logs", resume_from_checkpoint="latest")
    assert f"step-{k:07d} at step {k}" in output, output[-3000:]
    resumed = metrics_by_step(out, "loss")
    for step in range(k + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference.losses[step], rel=1e-5), step
    assert_mlflow_run_continued(uri, run.info.run_id, reference.losses, after=0)


def test_sigterm_to_torchrun_checkpoints_and_resumes_with_the_same_losses(reference: Reference, tmp_path: Path) -> None:
    out, db, log = tmp_path / "out", tmp_path / "mlflow.db", tmp_path / "launcher.log"
    cmd = [venv_bin("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "xlsr_dist.train"]
    launcher = _start(cmd + tiny_flags(out, f"sqlite:///{db}"), log)
    try:
        signalled_at = _wait_for_step(out, 2, launcher, log)
        launcher.send_signal(signal.SIGTERM)  # the launcher only, as Kubernetes signals a container's first process
        status = launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    text = log.read_text()
    assert status == 1 and "SignalException" in text, f"torchrun's own status after SIGTERM: {status}\n{text[-3000:]}"
    _wait_group_gone(launcher.pid, log)
    _check_stopped_and_resume(out, db, text, signalled_at, reference)


def test_sigterm_to_deepspeed_reaches_ranks_only_through_its_process_group(
    reference: Reference, tmp_path: Path
) -> None:
    out, db, log = tmp_path / "out", tmp_path / "mlflow.db", tmp_path / "launcher.log"
    cmd = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "xlsr_dist.train"]
    launcher = _start(cmd + tiny_flags(out, f"sqlite:///{db}"), log)
    pgid = launcher.pid
    try:
        # The runner alone: it dies of the signal and forwards nothing; the ranks train on.
        first = _wait_for_step(out, 1, launcher, log)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == -signal.SIGTERM
        signalled_at = _wait_for_step(out, first + 1, pgid, log)
        assert "stop requested" not in log.read_text()
        # The whole group (deepspeed.launcher.launch and the ranks): what SLURM, dumb-init or `tini -g` send.
        os.killpg(pgid, signal.SIGTERM)
        _wait_group_gone(pgid, log)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    _check_stopped_and_resume(out, db, log.read_text(), signalled_at, reference)
