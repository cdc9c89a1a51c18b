"""Rank-0 MLflow tracking that never holds training up, never loses a metric and never logs a secret.

One MLflow run per training run (a resume or SLURM requeue continues it). ``log_metrics`` only appends to a
queue and to ``<output_dir>/metrics.jsonl``; a background thread sends the queue with ``MlflowClient.log_batch``.
When the server is away the rows stay queued and are retried with backoff (one warning per outage); ``close``
waits a bounded time, then writes what is still unsent to ``<output_dir>/mlflow_unsent.jsonl`` for
``python -m xlsr_dist.tracking replay --output_dir DIR`` (``--all`` resends metrics.jsonl, e.g. after a
SIGKILL). Re-sending a row is harmless: MLflow's stores drop a metric identical in key, value, step and
timestamp, and every row keeps the timestamp it was logged with. ``$XLSR_DIST_MLFLOW_FLUSH_TIMEOUT_S`` sets
close()'s wait (default 60 s; at most 10 s when the run ends as KILLED, i.e. preempted).

The other trackers (a NullTracker on ranks other than 0, a LocalTracker with ``--report_to none``) and the choice
between them are in tracker.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from xlsr_dist.tracking.artifacts import STAGING_DIR, stage_artifact, upload_artifact
from xlsr_dist.tracking.client import (
    error_code,
    fail_fast_http,
    get_or_create_experiment,
    is_permanent,
    open_client,
    short_error,
)
from xlsr_dist.tracking.records import (
    METRICS_FILE,
    UNSENT_FILE,
    append_row,
    open_record,
    read_unsent,
    write_run_info,
    write_unsent,
)
from xlsr_dist.tracking.redact import redact_text
from xlsr_dist.tracking.values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE,
    clean_metrics,
    params_to_relog,
    sanitize,
)

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_ENV = "XLSR_DIST_MLFLOW_FLUSH_TIMEOUT_S"
DEFAULT_FLUSH_TIMEOUT_S = 60.0
PREEMPTED_FLUSH_TIMEOUT_S = 10.0


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
        self._file: IO[str] | None = None
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
        append_row(self._file, rows, step, timestamp)
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
            write_unsent(path, unsent)
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

    def create_run(self, client: Any, spec: Mapping[str, Any]) -> str:
        """Create (or continue) the run a ``start`` row of mlflow_unsent.jsonl describes, now, in the calling thread,
        and record it in run_info.json; returns its id. For replay, which sends what a tracker could not."""
        self._start_spec = dict(spec)
        self._create_run(client)
        return str(self.run_id)

    # -- background side --------------------------------------------------------------------------------------------

    def _adopt_unsent(self, run_id: str) -> None:
        """A resumed run picks up what its previous attempt could not send."""
        path = self.output_dir / UNSENT_FILE
        if not path.is_file():
            return
        rows = read_unsent(path)
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
                if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
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
            if not upload_artifact(client, str(self.run_id), path, artifact_path):
                log.warning("artifact %s vanished before it could be uploaded", path)
            with self._lock:
                self._artifacts.pop(0)
