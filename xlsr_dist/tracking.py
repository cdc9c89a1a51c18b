"""Rank-0 MLflow tracking that never holds training up, never loses a metric and never logs a secret.

One MLflow run per training run (a resume or SLURM requeue continues it). ``log_metrics`` only appends to a
queue and to ``<output_dir>/metrics.jsonl``; a background thread sends the queue with ``MlflowClient.log_batch``.
When the server is away the rows stay queued and are retried with backoff (one warning per outage); ``close``
waits a bounded time, then writes what is still unsent to ``<output_dir>/mlflow_unsent.jsonl`` for
``python -m xlsr_dist.tracking replay --output_dir DIR`` (``--all`` resends metrics.jsonl, e.g. after a
SIGKILL). Re-sending a row is harmless: MLflow's stores drop a metric identical in key, value, step and
timestamp, and every row keeps the timestamp it was logged with. ``$XLSR_DIST_MLFLOW_FLUSH_TIMEOUT_S`` sets
close()'s wait (default 60 s; at most 10 s when the run ends as KILLED, i.e. preempted).

``metrics.jsonl`` is only appended to; each tracker start writes a marker row, and readers take the rows after
the last marker of a fresh (not resumed) start, so a new run in an old --output_dir does not mix with the old one.
Other ranks get a ``NullTracker``; rank 0 with ``--report_to none`` still keeps the local ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from xlsr_dist.config import TrackingConfig
from xlsr_dist.world import World

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "loss",
    "learning_rate",
    "grad_norm",
    "loss_scale",
    "epoch",
    "eval_loss",
    "eval_wer",
    "eval_cer",
    "throughput",
)
DEFAULT_EXPERIMENT = "xlsr_dist"
RUN_INFO = "run_info.json"
METRICS_FILE = "metrics.jsonl"
UNSENT_FILE = "mlflow_unsent.jsonl"
STAGING_DIR = ".mlflow_staging"
REFERENCE_TAG = "xlsr_dist.reference"
# MLflow 3 sorts experiments into GenAI and model training by this tag (its UI still opens on the last-used mode).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
FLUSH_TIMEOUT_ENV = "XLSR_DIST_MLFLOW_FLUSH_TIMEOUT_S"
DEFAULT_FLUSH_TIMEOUT_S = 60.0
PREEMPTED_FLUSH_TIMEOUT_S = 10.0

# MLflow's own limits (mlflow.utils.validation); exceeding them turns a whole batch into a permanent error.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
REDACTED = "<redacted>"

# Errors that no retry can fix; everything else (connection refused, timeouts, 5xx) is treated as an outage.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_STATE",
        "RESOURCE_ALREADY_EXISTS",
        "MALFORMED_REQUEST",
    }
)


class Tracker(Protocol):
    run_id: str | None

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


# --------------------------------------------------------------------------------------------------------------
# Where to log


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """--tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory (absolute)."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return "sqlite:///" + str(Path.cwd().resolve() / "mlflow.db")
    return _absolute_sqlite(uri)


def resolve_experiment(cfg: TrackingConfig) -> str:
    """--experiment_name, else $MLFLOW_EXPERIMENT_NAME, else 'xlsr_dist'."""
    return cfg.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or DEFAULT_EXPERIMENT


def _absolute_sqlite(uri: str) -> str:
    # A relative sqlite path would name another database as soon as a tool runs from another directory.
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def local_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact location for an experiment created in a local store: ``mlartifacts/<experiment>`` beside the sqlite
    file (or in the working directory); None for a server, which decides itself."""
    if is_remote(uri):
        return None
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        base = Path(uri[len("sqlite:///") :]).resolve().parent
    else:
        base = Path.cwd().resolve()
    safe = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or DEFAULT_EXPERIMENT
    return (base / "mlartifacts" / safe).as_uri()


def fail_fast_http(max_retries: int = 0, timeout_s: int = 20) -> None:
    """Make MLflow's HTTP client give up quickly on a dead server (its defaults retry for about 4 minutes).

    Process-wide (MLflow reads these variables on every request); values the user exported are kept.
    The tracker does its own retrying, so its client needs none.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def open_client(uri: str, max_retries: int = 0, timeout_s: int = 20) -> Any:
    """An MlflowClient for ``uri`` with fail-fast HTTP settings."""
    fail_fast_http(max_retries, timeout_s)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """Experiment id for ``name``; created (with a local artifact root for local stores) when missing."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise MlflowException(f"MLflow experiment {name!r} is deleted; restore it or use another --experiment_name")
        return str(exp.experiment_id)
    try:
        return str(
            client.create_experiment(
                name, artifact_location=local_artifact_root(uri, name), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        )
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # another process created it in between
            raise
        exp = client.get_experiment_by_name(name)
        return str(exp.experiment_id)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def is_permanent(exc: BaseException) -> bool:
    return _error_code(exc) in _PERMANENT_ERROR_CODES


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return redact_text(line[:300])


# --------------------------------------------------------------------------------------------------------------
# Secrets: dropped by name, redacted by value


_SECRET_WORDS = frozenset(
    {
        "token",
        "tokens",
        "password",
        "passwd",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "apikey",
        "passphrase",
        "cookie",
        "privatekey",
        "accesskey",
        "secretkey",
    }
)
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("access", "key"),
        ("secret", "key"),
        ("private", "key"),
        ("account", "key"),
        ("session", "key"),
        ("signing", "key"),
        ("encryption", "key"),
        ("client", "secret"),
    }
)
# "token" next to these words is a vocabulary notion (pad_token_id, max_tokens), not a credential.
_TOKEN_NOT_SECRET = frozenset(
    {
        "id",
        "ids",
        "type",
        "types",
        "length",
        "len",
        "count",
        "max",
        "min",
        "num",
        "pad",
        "bos",
        "eos",
        "unk",
        "cls",
        "sep",
        "mask",
        "special",
        "per",
        "limit",
        "embedding",
        "embeddings",
        "vocab",
        "delimiter",
    }
)
_TOKEN_WORDS = frozenset({"token", "tokens"})

_SECRET_VALUE_PATTERNS = [
    re.compile(p)
    for p in (
        r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face
        r"\bapi_org_[A-Za-z0-9]{20,}",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",  # AWS access key ids
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
        r"\bgithub_pat_[A-Za-z0-9_]{30,}",
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI-style
        r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
        r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JWT
        # AWS secret access key shape: 40 base64 characters with both cases (a git sha is lower-case hex).
        r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    )
]
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_KNOWN_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "WANDB_API_KEY",
    "DATABRICKS_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True for names that hold credentials: hf_token, MLFLOW_TRACKING_PASSWORD, aws_secret_access_key, ..."""
    words = _words(name)
    for i, w in enumerate(words):
        if w in _TOKEN_WORDS:
            neighbours = set(words[max(0, i - 1) : i] + words[i + 1 : i + 2])
            if not neighbours & _TOKEN_NOT_SECRET:
                return True
        elif w in _SECRET_WORDS:
            return True
        if i + 1 < len(words) and (w, words[i + 1]) in _SECRET_PAIRS:
            return True
    return False


def _secret_env_values(env: Mapping[str, str] | None = None) -> list[str]:
    e = os.environ if env is None else env
    # Under 4 characters a "secret" would redact digits and letters all over the config; such a password is
    # not protected by redaction anyway.
    values = {e[k] for k in _KNOWN_SECRET_ENV if len(e.get(k, "")) >= 4}
    # Short values ("1", "true") of a secret-looking variable would redact half the config; real secrets are long.
    values |= {v for k, v in e.items() if len(v) >= 6 and is_secret_name(k)}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials replaced by <redacted>: secret environment values, token shapes, URL passwords."""
    for value in _secret_env_values(env):
        text = text.replace(value, REDACTED)
    for pattern in _SECRET_VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def _valid_key(key: str) -> str:
    # MLflow refuses characters outside [/\w.\- :] and names that normalise to another path.
    key = re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/ ") or "_"
    key = re.sub(r"/+", "/", key).replace("/./", "/").replace("..", "_")
    return key[:MAX_KEY]


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings -> dotted keys (deepspeed.zero_optimization.stage), the shape of params and train_config."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def sanitize(values: Mapping[str, Any], limit: int) -> tuple[dict[str, str], list[str]]:
    """Flatten nested mappings with dotted keys, drop secret-named entries, redact secret values, truncate.

    Returns (clean, dropped names)."""
    flat: dict[str, Any] = {}
    flatten("", values, flat)
    clean: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in flat.items():
        if is_secret_name(key):
            dropped.append(key)
            continue
        # Redact before truncating so a cut can never leave half a secret behind.
        clean[_valid_key(key)] = redact_text(_as_text(value))[:limit]
    return clean, dropped


_TEXT_SUFFIXES = frozenset(
    {
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".txt",
        ".md",
        ".cfg",
        ".ini",
        ".toml",
        ".log",
        ".csv",
        ".tsv",
        ".sh",
        ".py",
        ".env",
        ".conf",
    }
)
_MAX_REDACT_BYTES = 64 * 1024 * 1024


def stage_artifact(local_path: str | Path, staging_root: Path) -> Path:
    """The path to upload for ``local_path``: a redacted copy under ``staging_root`` when a text file (or a text
    file inside a directory) holds a secret, else ``local_path`` itself."""
    src = Path(local_path)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    redacted: dict[Path, str] = {}
    for f in files:
        if f.suffix.lower() not in _TEXT_SUFFIXES or f.stat().st_size > _MAX_REDACT_BYTES:
            continue
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        clean = redact_text(text)
        if clean != text:
            redacted[f] = clean
    if not redacted:
        return src
    staging_root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=staging_root)) / src.name
    if src.is_file():
        dest.write_text(redacted[src])
    else:
        shutil.copytree(src, dest)
        for f, clean in redacted.items():
            (dest / f.relative_to(src)).write_text(clean)
    return dest


# --------------------------------------------------------------------------------------------------------------
# Local records


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def write_run_info(output_dir: str | Path, run_id: str, tracking_uri: str, experiment: str) -> None:
    _write_json_atomic(
        Path(output_dir) / RUN_INFO,
        {"run_id": run_id, "tracking_uri": redact_text(tracking_uri), "experiment": experiment},
    )


def read_run_info(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_INFO
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def _record_rows(path: Path) -> list[dict[str, Any]]:
    """The metric rows of the current training run in metrics.jsonl: those after its last fresh start marker."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if "event" in row:
            if row["event"] == "start" and not row.get("resume"):
                rows.clear()  # an earlier run in the same --output_dir; its rows stay on disk, unused
            continue
        if "step" in row:
            rows.append(row)
    return rows


def _row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k not in ("step", "timestamp") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def read_metrics_jsonl(path: str | Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl -> {metric: {step: value}} for the latest training run recorded there; a step logged twice
    (a resumed run repeating steps after its checkpoint) keeps its last value."""
    out: dict[str, dict[int, float]] = {}
    for row in _record_rows(Path(path)):
        for key, value in _row_metrics(row).items():
            out.setdefault(key, {})[int(row["step"])] = value
    return out


def _to_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def clean_metrics(metrics: Mapping[str, Any], warned: set[str]) -> dict[str, float]:
    """Numeric values under MLflow-valid names; a non-numeric value is skipped (warned about once per name)."""
    rows: dict[str, float] = {}
    for key, value in metrics.items():
        number = _to_float(value)
        if number is None:
            if key not in warned:
                warned.add(key)
                log.warning("metric %r has non-numeric value %r; not logged", key, value)
            continue
        rows[_valid_key(key)] = number
    return rows


# --------------------------------------------------------------------------------------------------------------
# Trackers


class NullTracker:
    """Ranks other than 0: does nothing."""

    run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        self.run_id = resume_run_id
        return resume_run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class LocalTracker(NullTracker):
    """Rank 0 with --report_to none: keeps ``metrics.jsonl`` (export reads it), talks to nobody."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self._file: Any = None
        self._warned: set[str] = set()

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        self._file = open_record(self.output_dir, resume=resume_run_id is not None)
        self.run_id = resume_run_id
        return resume_run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        _append_row(self._file, clean_metrics(metrics, self._warned), step, int(time.time() * 1000))

    def close(self, status: str = "FINISHED") -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_record(output_dir: Path, resume: bool) -> Any:
    """metrics.jsonl opened for appending, after a marker saying whether this run continues the rows before it.

    Nothing is truncated: a resumed run whose MLflow run id was never known still keeps its earlier rows on disk."""
    output_dir.mkdir(parents=True, exist_ok=True)
    f = open(output_dir / METRICS_FILE, "a")
    f.write(json.dumps({"event": "start", "resume": resume, "timestamp": int(time.time() * 1000)}) + "\n")
    f.flush()
    return f


def _append_row(file: Any, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
    if file is None:
        return
    row: dict[str, Any] = {"step": int(step), "timestamp": timestamp}
    row.update(metrics)
    # One line per call, flushed: a crash keeps every row logged before it.
    file.write(json.dumps(row) + "\n")
    file.flush()


class MlflowTracker:
    """Rank 0's MLflow run; see the module docstring for the delivery guarantees."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        output_dir: str | Path,
        run_name: str = "",
        flush_timeout_s: float | None = None,
        start_timeout_s: float = 30.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        if flush_timeout_s is None:
            flush_timeout_s = float(os.environ.get(FLUSH_TIMEOUT_ENV, DEFAULT_FLUSH_TIMEOUT_S))
        self.flush_timeout_s = flush_timeout_s
        self.start_timeout_s = start_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.run_id: str | None = None

        self._lock = threading.Lock()
        self._wake = threading.Event()  # new work queued
        self._hurry = threading.Event()  # close(): stop waiting out the backoff
        self._first_attempt = threading.Event()
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._artifacts: list[tuple[str, str | None]] = []
        self._failed: list[tuple[str, float, int, int]] = []  # refused for good; kept for the unsent file
        self._start_spec: dict[str, Any] | None = None
        self._run_ready = False
        self._created_run_id: str | None = None  # a run created whose params are not all logged yet
        self._end_status: str | None = None
        self._ended = False
        self._abandoned = False
        self._down_since: float | None = None
        self._invalid_warned: set[str] = set()
        self._file: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- training side (must stay fast) --------------------------------------------------------------------------

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        """Create (or continue) the run; waits at most start_timeout_s, then carries on and retries in the
        background. Returns the run id, or None while the server has not been reached."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        clean_params, dropped = sanitize(params, MAX_PARAM_VALUE)
        clean_tags, dropped_tags = sanitize(tags, MAX_TAG_VALUE)
        if dropped or dropped_tags:
            log.info(
                "not logging %d secret-looking setting(s) to MLflow: %s",
                len(dropped) + len(dropped_tags),
                ", ".join(dropped + dropped_tags),
            )
        clean_tags.setdefault("xlsr_dist.output_dir", str(self.output_dir.resolve()))
        self._start_spec = {
            "params": clean_params,
            "tags": clean_tags,
            "resume_run_id": resume_run_id,
            "run_name": self.run_name,
            "experiment": self.experiment,
        }
        self._file = open_record(self.output_dir, resume=resume_run_id is not None)
        if resume_run_id:
            self._adopt_unsent(resume_run_id)
        fail_fast_http()
        import mlflow.tracking  # noqa: F401 - here, not in the thread: a cold import takes seconds and the GIL

        self._thread = threading.Thread(target=self._worker, name="mlflow-tracker", daemon=True)
        self._thread.start()
        self._first_attempt.wait(self.start_timeout_s)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        rows = clean_metrics(metrics, self._invalid_warned)
        _append_row(self._file, rows, step, timestamp)
        with self._lock:
            self._pending.extend((k, v, timestamp, int(step)) for k, v in rows.items())
        self._wake.set()

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if not Path(local_path).exists():
            log.warning("artifact %s does not exist; not logged", local_path)
            return
        staged = stage_artifact(local_path, self.output_dir / STAGING_DIR)
        with self._lock:
            self._artifacts.append((str(staged), artifact_path))
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until everything queued so far has reached MLflow; True if it has."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                if self._run_ready and not self._pending and not self._artifacts:
                    return True
            time.sleep(0.05)
        return False

    def close(self, status: str = "FINISHED") -> None:
        """Send what is queued (waiting at most flush_timeout_s), end the run with ``status``; whatever could not
        be sent goes to mlflow_unsent.jsonl."""
        if self._closed:
            return
        self._closed = True
        if self._start_spec is None:  # never started: nothing was queued
            return
        with self._lock:
            self._end_status = status
        self._wake.set()
        self._hurry.set()
        # A preempted job (SLURM sends SIGTERM, then SIGKILL after KillWait, often 30 s) must get to write the
        # unsent file before it is killed; the rows are in metrics.jsonl regardless.
        timeout = min(self.flush_timeout_s, PREEMPTED_FLUSH_TIMEOUT_S) if status == "KILLED" else self.flush_timeout_s
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._abandoned = True
            unsent = self._unsent_rows()
        if self._file is not None:
            self._file.close()
            self._file = None
        if unsent:
            path = self.output_dir / UNSENT_FILE
            with open(path, "w") as f:
                for row in unsent:
                    f.write(json.dumps(row) + "\n")
            n = sum(1 for r in unsent if r["kind"] == "metric")
            log.warning(
                "MLflow at %s still unreachable after %.0f s: %d metric value(s) written to %s; send them "
                "later with: python -m xlsr_dist.tracking replay --output_dir %s",
                redact_text(self.tracking_uri),
                timeout,
                n,
                path,
                self.output_dir,
            )
        else:
            (self.output_dir / UNSENT_FILE).unlink(missing_ok=True)
            shutil.rmtree(self.output_dir / STAGING_DIR, ignore_errors=True)

    # -- background side --------------------------------------------------------------------------------------------

    def _adopt_unsent(self, run_id: str) -> None:
        """A resumed run picks up what its previous attempt could not send."""
        path = self.output_dir / UNSENT_FILE
        if not path.is_file():
            return
        rows = _read_unsent(path)
        header = next((r for r in rows if r["kind"] == "run"), {})
        if header.get("run_id") not in (None, run_id):
            log.warning(
                "%s belongs to run %s, not %s; leaving it for `python -m xlsr_dist.tracking replay`",
                path,
                header.get("run_id"),
                run_id,
            )
            return
        for r in rows:
            if r["kind"] == "metric":
                self._pending.append((r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])))
            elif r["kind"] == "artifact" and Path(r["local_path"]).exists():
                self._artifacts.append((r["local_path"], r.get("artifact_path")))
        path.unlink()

    def _unsent_rows(self) -> list[dict[str, Any]]:
        spec = self._start_spec or {}
        rows: list[dict[str, Any]] = []
        metrics = self._failed + self._pending
        pending_work = metrics or self._artifacts or not self._run_ready or not self._ended
        if not pending_work:
            return rows
        rows.append(
            {
                "kind": "run",
                "run_id": self.run_id or spec.get("resume_run_id"),
                "tracking_uri": redact_text(self.tracking_uri),
                "experiment": self.experiment,
            }
        )
        if not self._run_ready:
            rows.append({"kind": "start", **spec})
        rows += [{"kind": "metric", "key": k, "value": v, "timestamp": ts, "step": s} for k, v, ts, s in metrics]
        rows += [{"kind": "artifact", "local_path": p, "artifact_path": a} for p, a in self._artifacts]
        if self._end_status is not None and not self._ended:
            rows.append({"kind": "end", "status": self._end_status})
        return rows

    def _worker(self) -> None:
        backoff = self.retry_initial_s
        client: Any = None
        while True:
            with self._lock:
                if self._abandoned:
                    return
                idle = (
                    self._run_ready
                    and not self._pending
                    and not self._artifacts
                    and (self._end_status is None or self._ended)
                )
                closing = self._end_status is not None
            if idle:
                if closing:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                if client is None:
                    client = open_client(self.tracking_uri)
                if not self._run_ready:
                    self._create_run(client)
                sent = self._send_metrics(client)
                self._send_artifacts(client)
                with self._lock:
                    finish = self._end_status is not None and not self._pending and not self._artifacts
                    status = self._end_status
                if finish and not self._ended:
                    client.set_terminated(self.run_id, status=status)
                    self._ended = True
                if self._down_since is not None:
                    log.info(
                        "MLflow at %s reachable again after %.0f s; buffered metrics sent (%d in the last batch)",
                        redact_text(self.tracking_uri),
                        time.time() - self._down_since,
                        sent,
                    )
                    self._down_since = None
                backoff = self.retry_initial_s
            except Exception as exc:  # noqa: BLE001 - tracking must never take training down
                self._first_attempt.set()
                if is_permanent(exc):
                    self._on_permanent(exc)
                    continue
                if self._down_since is None:
                    self._down_since = time.time()
                    with self._lock:
                        n = len(self._pending)
                    log.warning(
                        "MLflow at %s unreachable; buffering %d metrics, will retry (%s)",
                        redact_text(self.tracking_uri),
                        n,
                        short_error(exc),
                    )
                if self._hurry.is_set():
                    # close() is waiting on us: retry often, but a refused connection returns at once, so not
                    # in a busy loop.
                    time.sleep(min(backoff, 1.0))
                else:
                    self._hurry.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)

    def _on_permanent(self, exc: BaseException) -> None:
        if not self._run_ready:
            # The run itself cannot be created/continued (e.g. deleted experiment): nothing will ever be sent.
            log.error(
                "MLflow refused the run: %s; metrics are kept in %s only",
                short_error(exc),
                self.output_dir / METRICS_FILE,
            )
            with self._lock:
                self._abandoned = True
            return
        # Drop (into the unsent file) whatever was being sent, so the loop moves on instead of retrying forever.
        with self._lock:
            batch = self._pending[:MAX_METRICS_PER_BATCH]
            del self._pending[: len(batch)]
            self._failed.extend(batch)
            artifact = self._artifacts.pop(0) if not batch and self._artifacts else None
            if not batch and artifact is None:
                self._ended = True  # it was set_terminated that failed: leave the run's status as it is
        if batch:
            log.error(
                "MLflow refused a batch of %d metric value(s): %s; they stay in %s",
                len(batch),
                short_error(exc),
                self.output_dir / METRICS_FILE,
            )
        elif artifact is not None:
            log.error("MLflow refused artifact %s: %s", artifact[0], short_error(exc))
        else:
            log.error("MLflow refused to end run %s: %s", self.run_id, short_error(exc))

    def _create_run(self, client: Any) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        spec = self._start_spec or {}
        params: dict[str, str] = dict(spec.get("params", {}))
        tags: dict[str, str] = dict(spec.get("tags", {}))
        run = None
        # After an outage half way through this method, continue the run already created instead of a second one.
        resume_id = self._created_run_id or spec.get("resume_run_id")
        if resume_id:
            try:
                run = client.get_run(resume_id)
            except MlflowException as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning(
                    "MLflow run %s not found at %s; starting a new run", resume_id, redact_text(self.tracking_uri)
                )
        if run is not None and run.info.lifecycle_stage != "active":
            log.warning("MLflow run %s is deleted; starting a new run", resume_id)
            run = None
        if run is None:
            experiment_id = get_or_create_experiment(client, self.experiment, self.tracking_uri)
            run = client.create_run(experiment_id, tags=tags, run_name=spec.get("run_name") or None)
            self._created_run_id = run.info.run_id
            to_log = params
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            to_log = params_to_relog(run.data.params, params)
        run_id = run.info.run_id
        items = list(to_log.items())
        tag_items = list(tags.items())
        for i in range(0, max(len(items), len(tag_items)), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                run_id,
                params=[Param(k, v) for k, v in items[i : i + MAX_PARAMS_TAGS_PER_BATCH]],
                tags=[RunTag(k, v) for k, v in tag_items[i : i + MAX_PARAMS_TAGS_PER_BATCH]],
            )
        self.run_id = run_id
        self._run_ready = True
        self._first_attempt.set()
        write_run_info(self.output_dir, run_id, self.tracking_uri, self.experiment)

    def _send_metrics(self, client: Any) -> int:
        from mlflow.entities import Metric

        sent = 0
        while True:
            with self._lock:
                batch = self._pending[:MAX_METRICS_PER_BATCH]
            if not batch:
                return sent
            client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in batch])
            with self._lock:
                # Only appends happen meanwhile, so the head is still this batch.
                del self._pending[: len(batch)]
            sent += len(batch)

    def _send_artifacts(self, client: Any) -> None:
        while True:
            with self._lock:
                if not self._artifacts:
                    return
                path, artifact_path = self._artifacts[0]
            if Path(path).is_dir():
                client.log_artifacts(self.run_id, path, artifact_path)
            elif Path(path).is_file():
                client.log_artifact(self.run_id, path, artifact_path)
            else:
                log.warning("artifact %s vanished before it could be uploaded", path)
            with self._lock:
                self._artifacts.pop(0)


def params_to_relog(existing: Mapping[str, str], params: Mapping[str, str]) -> dict[str, str]:
    """Params to log when continuing a run: new ones as they are, changed ones under ``resume.<name>``.

    MLflow refuses to change a logged param, so identical ones are skipped and a ``resume.`` entry that already
    holds another value (a second resume that changed it again) is skipped with a warning."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key not in existing:
            out[key] = value
        elif existing[key] != value:
            alt = _valid_key("resume." + key)
            if alt not in existing:
                out[alt] = value
            elif existing[alt] != value:
                log.warning(
                    "param %s changed again on resume (%r -> %r); MLflow keeps the first values",
                    key,
                    existing[alt],
                    value,
                )
    return out


def build_tracker(world: World, cfg: TrackingConfig, output_dir: str) -> Tracker:
    """MLflow on rank 0 when --report_to mlflow; a local metrics.jsonl only with --report_to none; nothing on the
    other ranks."""
    if not world.is_main:
        return NullTracker()
    if cfg.report_to != "mlflow":
        return LocalTracker(output_dir)
    return MlflowTracker(resolve_tracking_uri(cfg), resolve_experiment(cfg), output_dir, run_name=cfg.run_name)


# --------------------------------------------------------------------------------------------------------------
# Replay


def _read_unsent(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def replay(output_dir: str | Path, tracking_uri: str = "", all_metrics: bool = False) -> str:
    """Send ``mlflow_unsent.jsonl`` (and with ``all_metrics`` every row of metrics.jsonl) to the run; returns the
    run id. Safe to repeat: rows already in MLflow are identical and dropped by the store."""
    from mlflow.entities import Metric

    out = Path(output_dir)
    path = out / UNSENT_FILE
    rows = _read_unsent(path) if path.is_file() else []
    info = read_run_info(out) or {}
    header = next((r for r in rows if r["kind"] == "run"), {})
    uri = (
        tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI", "")
        or header.get("tracking_uri")
        or info.get("tracking_uri", "")
    )
    if not uri or REDACTED in uri:
        raise SystemExit("replay: no usable tracking URI recorded; pass --tracking_uri (or set MLFLOW_TRACKING_URI)")
    uri = _absolute_sqlite(uri)
    experiment = header.get("experiment") or info.get("experiment") or DEFAULT_EXPERIMENT
    metrics = [
        (r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows if r["kind"] == "metric"
    ]
    if all_metrics:
        metrics += _metrics_jsonl_rows(out / METRICS_FILE)
    if not rows and not metrics:
        raise SystemExit(f"replay: nothing to send ({path} does not exist; use --all to resend {METRICS_FILE})")

    client = open_client(uri, max_retries=3, timeout_s=60)
    run_id = header.get("run_id") or info.get("run_id")
    start = next((r for r in rows if r["kind"] == "start"), None)
    if run_id is None and start is not None:
        tracker = MlflowTracker(uri, start.get("experiment") or experiment, out, run_name=start.get("run_name", ""))
        tracker._start_spec = start
        tracker._create_run(client)
        run_id = tracker.run_id
    if run_id is None:
        raise SystemExit(f"replay: no run id in {path} or {out / RUN_INFO}")
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(
            run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics[i : i + MAX_METRICS_PER_BATCH]]
        )
    for r in rows:
        if r["kind"] == "artifact":
            p = Path(r["local_path"])
            if p.is_dir():
                client.log_artifacts(run_id, str(p), r.get("artifact_path"))
            elif p.is_file():
                client.log_artifact(run_id, str(p), r.get("artifact_path"))
    end = next((r for r in rows if r["kind"] == "end"), None)
    if end is not None:
        client.set_terminated(run_id, status=end["status"])
    if path.is_file():
        path.unlink()
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    print(f"replayed {len(metrics)} metric value(s) to run {run_id} at {redact_text(uri)}")
    return str(run_id)


def _metrics_jsonl_rows(path: Path) -> list[tuple[str, float, int, int]]:
    return [
        (k, v, int(row.get("timestamp", 0)), int(row["step"]))
        for row in _record_rows(path)
        for k, v in _row_metrics(row).items()
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xlsr_dist.tracking", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="send metrics a training run could not deliver to MLflow")
    rp.add_argument("--output_dir", required=True, help="the training run's --output_dir")
    rp.add_argument("--tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI, else the one recorded")
    rp.add_argument("--all", action="store_true", help=f"also resend every row of {METRICS_FILE} (idempotent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    replay(args.output_dir, args.tracking_uri, all_metrics=args.all)


if __name__ == "__main__":
    main(sys.argv[1:])
