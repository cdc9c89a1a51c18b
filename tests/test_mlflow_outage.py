"""MLflow away during a real 2-rank training run against a real `mlflow server` (tests/_mlflow_server.py): training
never waits on it, metrics.jsonl holds every metric, and the MLflow run ends FINISHED holding exactly the values of
metrics.jsonl, one per step and key (no gap, no duplicate).

- down at start and throughout: the run finishes with status 0; what it could not send waits in mlflow_unsent.jsonl
  and `python -m xlsr_dist.tracking replay` delivers it once the server is up.
- killed mid-run and restarted (same port and store): the tracker delivers what it buffered by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests._dist import ROOT, RankResult, base_env, run_ranks
from tests._mlflow_server import MlflowServer
from tests._net import free_port
from tests._runs import mlflow_runs, tiny_flags
from xlsr_dist.tracking import FLUSH_TIMEOUT_ENV, RUN_INFO, UNSENT_FILE

pytestmark = pytest.mark.slow

STEPS = 8
PER_STEP = ("loss", "learning_rate", "grad_norm", "loss_scale", "skipped_steps", "epoch", "throughput")
# Longest pause allowed between two consecutive steps (or the tracker's start and step 1): well under what waiting on
# a dead server would add (start timeout 30 s, HTTP timeout 20 s, retry backoff up to 30 s); ~2 s on a loaded CPU.
MAX_STEP_GAP_S = 15.0


def _record(out: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r.get("event") for r in rows if "event" in r] == ["start"], "one fresh run"
    return rows


def _check_local_record(out: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl: every per-step metric at every step, the evaluations at 4 and 8, no step waiting on MLflow.
    Returns each key's (step, value) rows."""
    rows = _record(out)
    by_key: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "timestamp", "event", "resume"):
                by_key.setdefault(key, []).append((int(row["step"]), float(value)))
    for key in PER_STEP:
        assert [s for s, _ in by_key[key]] == list(range(1, STEPS + 1)), key
    for key in ("eval_loss", "eval_wer", "eval_cer"):
        assert [s for s, _ in by_key[key]] == [4, 8], key
    stamps = [r["timestamp"] for r in rows if "loss" in r or r.get("event") == "start"]
    gap = max(b - a for a, b in zip(stamps, stamps[1:])) / 1000
    print(f"longest pause between steps with MLflow away: {gap:.2f} s")  # shown with -s
    assert gap < MAX_STEP_GAP_S
    return by_key


def _check_mlflow_matches(uri: str, out: Path, by_key: dict[str, list[tuple[int, float]]]) -> None:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / RUN_INFO).read_text())["run_id"]
    (run,) = mlflow_runs(uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    client = MlflowClient(uri)
    for key, expected in by_key.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == sorted(expected), key
    assert not (out / UNSENT_FILE).exists()


def _rank0_warnings(output: str, what: str) -> list[str]:
    return [line for line in output.splitlines() if what in line]


def test_server_down_at_start_training_finishes_and_replay_completes_the_run(
    mlflow_server_factory: Callable[..., MlflowServer], tmp_path: Path
) -> None:
    port = free_port()
    out, uri = tmp_path / "out", f"http://127.0.0.1:{port}"
    # close() waits this long for the server at the end (default 60 s), then leaves the rest to replay.
    env = base_env(**{FLUSH_TIMEOUT_ENV: "5"})
    results = run_ranks(["-m", "xlsr_dist.train", *tiny_flags(out, uri)], 2, 600, env=env, log_dir=tmp_path / "logs")
    assert [r.returncode for r in results] == [0, 0], results[0].output[-4000:]
    assert len(_rank0_warnings(results[0].output, "unreachable; buffering")) == 1
    assert "python -m xlsr_dist.tracking replay --output_dir" in results[0].output
    by_key = _check_local_record(out)
    unsent = [json.loads(line) for line in (out / UNSENT_FILE).read_text().splitlines()]
    assert sum(r["kind"] == "metric" for r in unsent) == sum(len(v) for v in by_key.values())

    server = mlflow_server_factory(port=port)
    replay = [sys.executable, "-m", "xlsr_dist.tracking", "replay", "--output_dir", str(out)]
    done = subprocess.run(replay, capture_output=True, text=True, env=base_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_mlflow_matches(server.uri, out, by_key)


def test_server_killed_mid_run_and_restarted_gets_every_metric_once(
    mlflow_server_factory: Callable[..., MlflowServer], tmp_path: Path
) -> None:
    server = mlflow_server_factory()
    out = tmp_path / "out"
    # Long enough for the server's restart on a loaded CPU: a run that ends first still delivers at close().
    env = base_env(**{FLUSH_TIMEOUT_ENV: "300"})
    flags = tiny_flags(out, server.uri)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_ranks, ["-m", "xlsr_dist.train", *flags], 2, 900, env=env, log_dir=tmp_path / "logs")
        _wait(lambda: _last_step(out) >= 2 and (out / RUN_INFO).is_file(), "step 2 with the run created", run)
        server.kill()
        killed_at = _last_step(out)
        _wait(lambda: _last_step(out) >= min(killed_at + 2, STEPS), "more steps with the server down", run)
        restarting_at = _last_step(out)
        server.start()  # same port, database and artifact store
        restarted_at = _last_step(out)
        results = run.result()
    assert [r.returncode for r in results] == [0, 0], results[0].output[-4000:]
    assert restarting_at > killed_at, "training went on while the server was down"
    print(f"server killed at step {killed_at}, restarted from step {restarting_at} to {restarted_at}")  # with -s
    assert len(_rank0_warnings(results[0].output, "unreachable; buffering")) == 1, results[0].output[-4000:]
    assert len(_rank0_warnings(results[0].output, "reachable again")) == 1, results[0].output[-4000:]
    _check_mlflow_matches(server.uri, out, _check_local_record(out))


def _last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return max((json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()), default=0)


def _wait(condition: Callable[[], bool], what: str, run: Future[list[RankResult]], timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.done():
            results = run.result()
            pytest.fail(f"run ended before {what}: {[r.returncode for r in results]}\n{results[0].output[-3000:]}")
        assert time.monotonic() < deadline, f"not {what} after {timeout:.0f} s"
        time.sleep(0.05)
