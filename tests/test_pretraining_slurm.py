"""slurm/pretrain.sbatch on a real one-node SLURM (tests/_slurm.py), as tests/test_slurm.py tests slurm/train.sbatch:
2 pretraining ranks through srun; USR1 -> every rank saves the step they agreed on -> exit 75 -> the script requeues ->
the next attempt resumes in the same MLflow run, and the per-step losses are those of an uninterrupted run (one rank,
plain python: pretraining's losses do not depend on the rank count, tests/test_pretraining_ranks.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests._dist import ROOT, base_env, run_ranks
from tests._runs import metrics_by_step
from tests._slurm import SlurmCluster
from tests.test_pretraining_ranks import flags
from tests.test_slurm import stopped_and_requeued_once, usr1_after_step

pytestmark = pytest.mark.slow

STEPS = 10


def _flags(out: Path) -> list[str]:
    # test_pretraining_ranks' short run (the demo's audio, 6-s global batches), longer, so the stop lands mid-run.
    return flags(out, "--max_steps", str(STEPS), "--save_steps", "5", "--report_to", "mlflow")


def test_usr1_checkpoints_requeues_and_resumes_pretraining_with_identical_losses(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    ref = tmp_path / "reference"
    (done,) = run_ranks(
        ["-m", "xlsr_dist.pretrain", *_flags(ref), "--tracking_uri", f"sqlite:///{tmp_path}/ref.db"],
        world_size=1,
        timeout=300,
    )
    assert done.returncode == 0, done.output[-3000:]
    reference = metrics_by_step(ref, "loss")
    assert sorted(reference) == list(range(1, STEPS + 1))

    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    opts = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1"]
    job = slurm_cluster.sbatch(
        [*opts, "--job-name=xlsr-test", f"--output={tmp_path}/%x-%j.out", "slurm/pretrain.sbatch", *_flags(out)],
        env=base_env(XLSR_PYTHON=sys.executable, MLFLOW_TRACKING_URI=uri),
        cwd=ROOT,
    )
    signalled_at = usr1_after_step(slurm_cluster, job, tmp_path, out, 2)
    _, log, stop_step = stopped_and_requeued_once(slurm_cluster, job, tmp_path)
    assert signalled_at <= stop_step < STEPS, (signalled_at, stop_step)
    assert "[pretrain.sbatch" in log and "pretraining finished" in log, log[-3000:]

    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])  # one run, both attempts
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert [s for s, _ in history] == list(range(1, STEPS + 1)), "one value per step: no gap, no duplicate"
    for step, value in history:
        assert value == pytest.approx(reference[step], rel=1e-5), step
    assert run.info.status == "FINISHED"
    assert (out / "final" / "config.json").is_file()
