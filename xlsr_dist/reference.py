"""The seed model card's training results as an MLflow run, so every training run can be compared against it.

`python -m xlsr_dist.reference [--tracking_uri URI] [--experiment_name NAME]` imports the card's table
(xlsr_dist/resources/reference_training_results.csv) once per experiment under the metric names training uses
(loss, eval_loss, eval_wer, epoch) at the card's steps, with the card's hyperparameters as params. Running it again
finds the run by its tag and only fills in what is missing.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from xlsr_dist.config import TrackingConfig
from xlsr_dist.tracking import (
    MAX_METRICS_PER_BATCH,
    REFERENCE_TAG,
    get_or_create_experiment,
    open_client,
    params_to_relog,
    redact_text,
    resolve_experiment,
    resolve_tracking_uri,
    upload_artifact,
)

log = logging.getLogger(__name__)

RESOURCE = "reference_training_results.csv"
REFERENCE_MODEL = "XLS-R_53_english"
BASE_MODEL = "facebook/wav2vec2-large-xlsr-53"
RUN_NAME = f"reference: {REFERENCE_MODEL} ({BASE_MODEL} CTC)"
MODEL_TAG = "xlsr_dist.reference_model"
# Training's metric name -> the card's column.
COLUMNS = {"loss": "training_loss", "eval_loss": "validation_loss", "eval_wer": "wer", "epoch": "epoch"}
# The card's "Training hyperparameters" list, under the card's names, and again under the names of the training
# flags (so MLflow's compare view lines the reference up with a training run's params).
CARD_PARAMS = {
    "learning_rate": "0.0001",
    "train_batch_size": "8",
    "eval_batch_size": "8",
    "seed": "42",
    "optimizer": "Adam with betas=(0.9,0.999) and epsilon=1e-08",
    "lr_scheduler_type": "linear",
    "lr_scheduler_warmup_steps": "1000",
    "num_epochs": "30",
    "mixed_precision_training": "Native AMP",
    "model_name_or_path": BASE_MODEL,
    "global_batch_size": "8",
    "per_device_eval_batch_size": "8",
    "warmup_steps": "1000",
    "num_train_epochs": "30.0",
    "adam_beta1": "0.9",
    "adam_beta2": "0.999",
    "adam_epsilon": "1e-08",
    "precision": "fp16",
    "eval_steps": "500",
    "total_steps": "9000",
}
# Fixed timestamps (2022-01-01 + step seconds): importing again sends identical rows, which MLflow drops.
_BASE_TIMESTAMP_MS = 1_640_995_200_000


@dataclass(frozen=True)
class ReferenceRow:
    step: int
    epoch: float
    training_loss: float
    validation_loss: float
    wer: float


def reference_csv_text() -> str:
    """The packaged CSV (importlib.resources, so it is found in a wheel as well as in a checkout)."""
    try:
        return resources.files("xlsr_dist").joinpath("resources").joinpath(RESOURCE).read_text()
    except (OSError, TypeError, ModuleNotFoundError):
        # An editable install made while xlsr_dist had no __init__.py maps it as a namespace package, which
        # importlib.resources cannot read on Python 3.11; the file is next to this module all the same.
        return (Path(__file__).resolve().parent / "resources" / RESOURCE).read_text()


def load_reference() -> list[ReferenceRow]:
    """The card's training results, in step order."""
    text = reference_csv_text()
    rows = [
        ReferenceRow(
            step=int(r["step"]),
            epoch=float(r["epoch"]),
            training_loss=float(r["training_loss"]),
            validation_loss=float(r["validation_loss"]),
            wer=float(r["wer"]),
        )
        for r in csv.DictReader(io.StringIO(text))
    ]
    return sorted(rows, key=lambda r: r.step)


def reference_series() -> dict[str, dict[int, float]]:
    """Training metric name -> {step: reference value}."""
    rows = load_reference()
    return {metric: {r.step: float(getattr(r, column)) for r in rows} for metric, column in COLUMNS.items()}


def timestamp_for(step: int) -> int:
    return _BASE_TIMESTAMP_MS + step * 1000


def find_reference_runs(client: Any, experiment_id: str) -> list[Any]:
    """Reference runs in the experiment, oldest first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{REFERENCE_TAG}` = 'true'",
        order_by=["attributes.start_time ASC"],
        max_results=50,
    )
    return list(runs)


def _missing(client: Any, run_id: str, series: dict[str, dict[int, float]]) -> list[tuple[str, float, int]]:
    missing: list[tuple[str, float, int]] = []
    for key, by_step in series.items():
        have = {(m.step, round(m.value, 9)) for m in client.get_metric_history(run_id, key)}
        missing += [(key, value, step) for step, value in by_step.items() if (step, round(value, 9)) not in have]
    return missing


def ensure_reference_run(client: Any, experiment: str, tracking_uri: str) -> tuple[str, str]:
    """(run id, what happened: 'created' | 'complete' | 'filled N'); imports or completes the reference run."""
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = get_or_create_experiment(client, experiment, tracking_uri)
    series = reference_series()
    runs = find_reference_runs(client, experiment_id)
    if len(runs) > 1:
        log.warning(
            "%d reference runs in experiment %r; using the oldest, %s", len(runs), experiment, runs[0].info.run_id
        )
    tags = {
        REFERENCE_TAG: "true",
        MODEL_TAG: REFERENCE_MODEL,
        "xlsr_dist.kind": "reference",
        "mlflow.note.content": f"Training results of the {REFERENCE_MODEL} model card ({BASE_MODEL} fine-tuned "
        f"with CTC, global batch 8, 9000 steps), imported by xlsr_dist.reference.",
    }
    if runs:
        run = runs[0]
        run_id = run.info.run_id
        params = params_to_relog(run.data.params, CARD_PARAMS)
        missing = _missing(client, run_id, series)
        created = False
    else:
        run = client.create_run(experiment_id, tags=tags, run_name=RUN_NAME)
        run_id = run.info.run_id
        params = dict(CARD_PARAMS)
        missing = [(key, value, step) for key, by_step in series.items() for step, value in by_step.items()]
        created = True
    complete = not missing and not params and run.info.status == "FINISHED"
    if complete and _has_table(client, run_id):
        return run_id, "complete"
    client.log_batch(
        run_id, params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()]
    )
    for i in range(0, len(missing), MAX_METRICS_PER_BATCH):
        chunk = missing[i : i + MAX_METRICS_PER_BATCH]
        client.log_batch(run_id, metrics=[Metric(k, v, timestamp_for(s), s) for k, v, s in chunk])
    if not _has_table(client, run_id):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / RESOURCE
            path.write_text(reference_csv_text())
            upload_artifact(client, run_id, path)
    client.set_terminated(run_id, status="FINISHED")
    return run_id, "created" if created else f"filled {len(missing)}"


def _has_table(client: Any, run_id: str) -> bool:
    return any(f.path == RESOURCE for f in client.list_artifacts(run_id))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xlsr_dist.reference",
        description="Import the seed model card's training results as an MLflow run.",
    )
    parser.add_argument("--tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment_name", default="", help="default: $MLFLOW_EXPERIMENT_NAME, else xlsr_dist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrackingConfig(tracking_uri=args.tracking_uri, experiment_name=args.experiment_name)
    uri, experiment = resolve_tracking_uri(cfg), resolve_experiment(cfg)
    from mlflow.exceptions import MlflowException

    try:
        client = open_client(uri, max_retries=2, timeout_s=30)
        run_id, outcome = ensure_reference_run(client, experiment, uri)
    except MlflowException as exc:
        print(f"xlsr_dist.reference: MLflow at {redact_text(uri)}: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    n = len(load_reference())
    where = f"experiment {experiment!r} at {redact_text(uri)}"
    if outcome == "complete":
        print(f"reference run {run_id} already imported and complete ({n} steps) in {where}")
    elif outcome == "created":
        print(f"reference run {run_id} imported ({n} steps of loss, eval_loss, eval_wer, epoch) into {where}")
    else:
        print(f"reference run {run_id} in {where} was incomplete: {outcome.split()[1]} missing value(s) filled in")


if __name__ == "__main__":
    main()
