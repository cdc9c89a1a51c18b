"""slurm/train.sbatch on a real one-node SLURM (tests/_slurm.py): 2 tasks through srun, the rank-count check before
srun, and preemption: USR1 -> every rank checkpoints -> exit 75 -> the script requeues -> the next attempt resumes
in the same MLflow run with the same per-step losses as an uninterrupted run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests._dist import ROOT, base_env, run_ranks
from tests._runs import metrics_by_step, mlflow_runs, tiny_flags
from tests._slurm import SlurmCluster

pytestmark = pytest.mark.slow

STEPS = 8
# What every run here shares with the reference: fp32, no SpecAugment, every step logged, eval and save at 4 and 8.
RUN = dict(max_steps=STEPS, eval_steps=4, save_steps=4)


def _train_flags(out: Path) -> list[str]:
    """tiny_flags without --tracking_uri: the jobs get it from MLFLOW_TRACKING_URI, as the sbatch passes it."""
    flags = tiny_flags(out, "unused", **RUN)
    i = flags.index("--tracking_uri")
    return flags[:i] + flags[i + 2 :]


def _submit(cluster: SlurmCluster, tmp_path: Path, out: Path, uri: str, sbatch_opts: list[str] | None = None) -> int:
    job_env = base_env(XLSR_PYTHON=sys.executable, MLFLOW_TRACKING_URI=uri)
    opts = sbatch_opts or ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]
    # Submitted from the repository root like a user would; the log goes to tmp, not into the repo tree.
    return cluster.sbatch(
        [*opts, "--job-name=xlsr-test", f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch", *_train_flags(out)],
        env=job_env,
        cwd=ROOT,
    )


def _job_log(tmp_path: Path, job_id: int) -> str:
    path = tmp_path / f"xlsr-test-{job_id}.out"
    return path.read_text(errors="replace") if path.is_file() else "(no job log)"


def _one_run_losses(uri: str) -> tuple[Any, list[tuple[int, float]]]:
    """The only MLflow run and its full loss history (every logged value, duplicates included)."""
    from mlflow.tracking import MlflowClient

    runs = mlflow_runs(uri)
    assert len(runs) == 1, f"expected exactly one MLflow run, found {len(runs)}"
    history = MlflowClient(uri).get_metric_history(runs[0].info.run_id, "loss")
    return runs[0], sorted((m.step, m.value) for m in history)


def _logged_steps(out: Path) -> list[int]:
    steps = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            steps.append(int(row["step"]))
    return steps


def usr1_after_step(cluster: SlurmCluster, job: int, tmp_path: Path, out: Path, step: int) -> int:
    """Once ``step`` is logged, USR1 to the job's tasks (every rank, not the batch shell), as SLURM's
    --signal=USR1@300 does before the time limit; returns the last step logged then."""
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() or max(_logged_steps(out), default=0) < step:
        assert time.monotonic() < deadline, f"no step {step} after 300 s\n{_job_log(tmp_path, job)[-3000:]}"
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), _job_log(tmp_path, job)[-3000:]
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", str(job))
    return max(_logged_steps(out))


def stopped_and_requeued_once(cluster: SlurmCluster, job: int, tmp_path: Path) -> tuple[dict[str, str], str, int]:
    """The job completed after exactly one requeue, every rank (2) having saved at the same step k on the stop
    request; (job info, log, k)."""
    info = cluster.wait_job(job, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=600)
    log = _job_log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-5000:])
    assert info["Restarts"] == "1", f"expected one requeue, got {info['Restarts']}\n{log[-5000:]}"
    stops = [line for line in log.splitlines() if "stop requested" in line]
    assert len(stops) == 2, f"both ranks must report the stop:\n{log[-5000:]}"
    stop_step = int(stops[0].split("checkpoint saved at step ")[1].split(";")[0])
    assert all(f"checkpoint saved at step {stop_step};" in line for line in stops)
    assert "requeueing job" in log and "attempt 2" in log
    return info, log, stop_step


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The same training, uninterrupted, started without SLURM (one process per rank)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    results = run_ranks(
        ["-m", "xlsr_dist.train", *tiny_flags(out, f"sqlite:///{tmp}/mlflow.db", **RUN)],
        world_size=2,
        timeout=600,
        log_dir=tmp / "logs",
    )
    for r in results:
        assert r.returncode == 0, f"rank {r.rank}:\n{r.output[-3000:]}"
    losses = metrics_by_step(out, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_rank_count_that_cannot_keep_batch_8_fails_before_srun(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    started = time.monotonic()
    job = _submit(
        slurm_cluster,
        tmp_path,
        out,
        uri,
        ["--nodes=1", "--ntasks-per-node=3", "--gpus-per-node=2", "--cpus-per-task=1"],
    )
    info = slurm_cluster.wait_job(job, timeout=60)
    log = _job_log(tmp_path, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (info, log)
    assert "1 node(s) x 3 GPU(s) per node = 3 ranks" in log and "1, 2, 4 or 8" in log, log
    assert "srun" not in log and not out.exists(), "nothing may start before the rank count is checked"
    assert time.monotonic() - started < 30


def test_sbatch_two_tasks_trains_to_the_end_in_one_mlflow_run(
    slurm_cluster: SlurmCluster, tmp_path: Path, reference_losses: dict[int, float]
) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    job = _submit(slurm_cluster, tmp_path, out, uri)
    info = slurm_cluster.wait_job(job, timeout=600)
    log = _job_log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-4000:])
    assert "1 node(s) [" in log and "x 2 rank(s) = 2" in log and "training finished" in log
    assert "world 2 rank(s)" in log, "rank 0 must see 2 ranks (SLURM_PROCID/SLURM_NTASKS through srun)"
    run, history = _one_run_losses(uri)
    assert [s for s, _ in history] == list(range(1, STEPS + 1))
    for step, value in history:
        assert value == pytest.approx(reference_losses[step], rel=1e-5, abs=1e-6), step
    assert run.data.params["world_size"] == "2"
    assert (out / "final" / "config.json").is_file()


def test_usr1_checkpoints_requeues_and_resumes_with_identical_losses(
    slurm_cluster: SlurmCluster, tmp_path: Path, reference_losses: dict[int, float]
) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    job = _submit(slurm_cluster, tmp_path, out, uri)
    signalled_at = usr1_after_step(slurm_cluster, job, tmp_path, out, 2)
    _, log, stop_step = stopped_and_requeued_once(slurm_cluster, job, tmp_path)
    assert signalled_at <= stop_step < STEPS, (signalled_at, stop_step)
    # Second attempt: resumed from exactly that checkpoint, so no step is trained (or logged) twice.
    assert f"step-{stop_step:07d} at step {stop_step}" in log, log[-5000:]

    run, history = _one_run_losses(uri)
    assert [s for s, _ in history] == list(range(1, STEPS + 1)), "one value per step: no gap, no duplicate"
    for step, value in history:
        assert value == pytest.approx(reference_losses[step], rel=1e-5, abs=1e-6), step
    assert _logged_steps(out) == list(range(1, STEPS + 1))
    assert run.info.status == "FINISHED"
    records = [r for r in slurm_cluster.completion_records() if r.get("JobId") == str(job)]
    assert [r["JobState"] for r in records][-1] == "COMPLETED" and len(records) == 2, records
