"""MLflow tracking for xlsr_dist, done by rank 0: it never holds training up, never loses a metric and never logs a
secret.

One concern per module:

- ``tracker``: the trackers training uses (``build_tracker``): MLflow on rank 0, the local record only with
  ``--report_to none``, nothing on the other ranks.
- ``mlflow_tracker``: rank 0's MLflow run, sent from a background thread that buffers and retries.
- ``records``: the run's local files: metrics.jsonl, run_info.json, train_config.json, mlflow_unsent.jsonl.
- ``replay``: ``python -m xlsr_dist.tracking replay --output_dir DIR`` sends what a run could not.
- ``uri``: the one order in which every command finds its tracking URI and experiment.
- ``client``: an MLflow client that fails fast, experiments, permanent errors.
- ``values``: what MLflow accepts (limits, keys, secret-free params and tags, numeric metrics).
- ``artifacts``: uploads, with text files holding a secret replaced by redacted copies.
- ``redact``: which names hold secrets and how any text loses its credentials.

Everything public is importable from ``xlsr_dist.tracking`` itself.
"""

from xlsr_dist.config import flatten
from xlsr_dist.tracking.artifacts import STAGING_DIR, stage_artifact, upload_artifact
from xlsr_dist.tracking.client import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    REFERENCE_TAG,
    fail_fast_http,
    get_or_create_experiment,
    is_permanent,
    open_client,
    short_error,
)
from xlsr_dist.tracking.mlflow_tracker import (
    DEFAULT_FLUSH_TIMEOUT_S,
    FLUSH_TIMEOUT_ENV,
    PREEMPTED_FLUSH_TIMEOUT_S,
    MlflowTracker,
)
from xlsr_dist.tracking.records import (
    METRICS_FILE,
    RUN_INFO,
    TRAIN_CONFIG,
    UNSENT_FILE,
    open_record,
    read_metrics_jsonl,
    read_run_info,
    write_run_info,
    write_train_config,
)
from xlsr_dist.tracking.redact import REDACTED, is_secret_name, redact_text, redact_values
from xlsr_dist.tracking.replay import replay
from xlsr_dist.tracking.tracker import METRIC_NAMES, LocalTracker, NullTracker, Tracker, build_tracker
from xlsr_dist.tracking.uri import (
    DEFAULT_EXPERIMENT,
    is_remote,
    local_artifact_root,
    resolve_experiment,
    resolve_tracking_uri,
)
from xlsr_dist.tracking.values import (
    MAX_KEY,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE,
    clean_metrics,
    params_to_relog,
    sanitize,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_FLUSH_TIMEOUT_S",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FLUSH_TIMEOUT_ENV",
    "MAX_KEY",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "METRICS_FILE",
    "METRIC_NAMES",
    "PREEMPTED_FLUSH_TIMEOUT_S",
    "REDACTED",
    "REFERENCE_TAG",
    "RUN_INFO",
    "TRAIN_CONFIG",
    "STAGING_DIR",
    "UNSENT_FILE",
    "LocalTracker",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "build_tracker",
    "clean_metrics",
    "fail_fast_http",
    "flatten",
    "get_or_create_experiment",
    "is_permanent",
    "is_remote",
    "is_secret_name",
    "local_artifact_root",
    "open_client",
    "open_record",
    "params_to_relog",
    "read_metrics_jsonl",
    "read_run_info",
    "redact_text",
    "redact_values",
    "replay",
    "resolve_experiment",
    "resolve_tracking_uri",
    "sanitize",
    "short_error",
    "stage_artifact",
    "upload_artifact",
    "write_run_info",
    "write_train_config",
]
