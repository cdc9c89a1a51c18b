"""Rank-0 MLflow tracking against a real `mlflow server`: metrics arrive at their steps exactly once (also across a
server crash and a replay), a resumed training continues its run, and no secret reaches MLflow."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._net import free_port
from xlsr_dist.config import TrackingConfig
from xlsr_dist.tracking import (
    METRICS_FILE,
    REDACTED,
    RUN_INFO,
    UNSENT_FILE,
    LocalTracker,
    MlflowTracker,
    NullTracker,
    build_tracker,
    is_secret_name,
    open_client,
    params_to_relog,
    read_metrics_jsonl,
    redact_text,
    replay,
    resolve_experiment,
    resolve_tracking_uri,
    sanitize,
    write_run_info,
    write_train_config,
)
from xlsr_dist.world import World

REPO = Path(__file__).resolve().parent.parent
HF_TOKEN = "hf_" + "Ab3" * 12
PASSWORD = "s3cr3t"


@pytest.fixture(autouse=True)
def _fast_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same settings the tracker would pick, set through monkeypatch so they do not leak into other test modules.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ---- pure -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "hf_token",
        "HF_TOKEN",
        "hub_token",
        "use_auth_token",
        "mlflow_tracking_password",
        "aws_secret_access_key",
        "AWS_ACCESS_KEY_ID",
        "api_key",
        "apiKey",
        "client_secret",
        "db.password",
        "credentials",
        "Authorization",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "pad_token_id",
        "learning_rate",
        "tokenizer_name",
        "max_tokens",
        "author",
        "deepspeed.zero_optimization.reduce_bucket_size",
        "keyword",
        "output_dir",
        "tracking_uri",
        "word_delimiter_token",
        "PWD",
        "OLDPWD",
        "HOME",
    ],
)
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_redaction_removes_token_shapes_env_values_and_url_passwords() -> None:
    env = {"MLFLOW_TRACKING_PASSWORD": PASSWORD, "MY_SERVICE_TOKEN": "tok-123456"}
    text = (
        f"hf={HF_TOKEN} aws=AKIAABCDEFGHIJKLMNOP secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
        f"db=postgresql://bob:{PASSWORD}@db:5432/x pw={PASSWORD} svc=tok-123456 "
        f"sha=0123456789abcdef0123456789abcdef01234567"
    )
    clean = redact_text(text, env)
    for secret in (
        HF_TOKEN,
        "AKIAABCDEFGHIJKLMNOP",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        PASSWORD,
        "tok-123456",
    ):
        assert secret not in clean
    assert "postgresql://bob:<redacted>@db:5432/x" in clean
    assert "sha=0123456789abcdef0123456789abcdef01234567" in clean  # a git sha is not a secret


def test_train_config_and_run_info_are_redacted_like_the_params_keeping_value_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    uri = f"http://alice:{PASSWORD}@mlflow.example:5000"
    write_train_config(
        tmp_path,
        {
            "learning_rate": 1e-4,
            "max_steps": 5,
            "freeze_feature_encoder": True,
            "fold_accents": None,
            "hf_token": HF_TOKEN,
            "tracking_uri": uri,
            "train_data": f"s3://bob:{PASSWORD}@bucket/train",
            "run_name": f"try {PASSWORD} again",
            "output_dir": tmp_path / "out",
        },
    )
    assert json.loads((tmp_path / "train_config.json").read_text()) == {
        "learning_rate": 1e-4,
        "max_steps": 5,
        "freeze_feature_encoder": True,
        "fold_accents": None,
        "tracking_uri": f"http://alice:{REDACTED}@mlflow.example:5000",
        "train_data": f"s3://bob:{REDACTED}@bucket/train",
        "run_name": f"try {REDACTED} again",
        "output_dir": str(tmp_path / "out"),
    }
    write_run_info(tmp_path, "run-1", uri, f"exp-{PASSWORD}")
    assert json.loads((tmp_path / RUN_INFO).read_text()) == {
        "run_id": "run-1",
        "tracking_uri": f"http://alice:{REDACTED}@mlflow.example:5000",
        "experiment": f"exp-{REDACTED}",
    }


def test_sanitize_flattens_drops_secrets_and_truncates_to_mlflow_limit() -> None:
    clean, dropped = sanitize(
        {
            "hf_token": HF_TOKEN,
            "long": "x" * 7000,
            "deepspeed": {"fp16": {"enabled": True}},
            "betas": [0.9, 0.999],
            "bad key!": 1,
        },
        6000,
    )
    assert dropped == ["hf_token"]
    assert len(clean["long"]) == 6000
    assert clean["deepspeed.fp16.enabled"] == "True"
    assert clean["betas"] == "[0.9, 0.999]"
    assert clean["bad key_"] == "1"


def test_resume_relogs_only_new_params_and_prefixes_changed_ones() -> None:
    existing = {"lr": "0.0001", "resume_from_checkpoint": ""}
    assert params_to_relog(existing, {"lr": "0.0001", "resume_from_checkpoint": "latest", "new": "1"}) == {
        "resume.resume_from_checkpoint": "latest",
        "new": "1",
    }
    existing["resume.resume_from_checkpoint"] = "latest"
    assert params_to_relog(existing, {"lr": "0.0001", "resume_from_checkpoint": "latest"}) == {}


def test_tracking_uri_and_experiment_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_experiment(TrackingConfig()) == "xlsr_dist"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_tracking_uri(TrackingConfig()) == "http://mlflow.example:5000"
    assert resolve_experiment(TrackingConfig()) == "from-env"
    cfg = TrackingConfig(tracking_uri="sqlite:///rel/m.db", experiment_name="flag")
    assert resolve_tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/rel/m.db"
    assert resolve_experiment(cfg) == "flag"


def test_commands_on_a_recorded_run_take_its_uri_before_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env.example:5000")
    recorded = "http://recorded.example:5000"
    assert resolve_tracking_uri(TrackingConfig(), recorded=recorded) == recorded
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://flag.example"), recorded=recorded) == (
        "http://flag.example"
    )
    # A URI recorded with its password redacted cannot be used: the environment is next.
    redacted = f"http://bob:{REDACTED}@recorded.example:5000"
    assert resolve_tracking_uri(TrackingConfig(), recorded=redacted) == "http://env.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # No local default for a recorded run: a fresh sqlite store cannot hold it.
    assert resolve_tracking_uri(TrackingConfig(), recorded=redacted) == ""
    write_run_info(tmp_path, "abc", redacted, "e")
    (tmp_path / UNSENT_FILE).write_text(json.dumps({"kind": "end", "status": "FINISHED"}) + "\n")
    with pytest.raises(SystemExit, match="no usable tracking URI"):
        replay(tmp_path)


def test_only_rank0_tracks_and_report_to_none_keeps_the_local_record(tmp_path: Path) -> None:
    assert isinstance(build_tracker(World(rank=1, world_size=2), TrackingConfig(), str(tmp_path)), NullTracker)
    local = build_tracker(World(), TrackingConfig(report_to="none"), str(tmp_path))
    assert isinstance(local, LocalTracker)
    assert local.start({"a": 1}, {}) is None
    local.log_metrics({"loss": 2.5, "learning_rate": 1e-4}, 10)
    local.close()
    assert read_metrics_jsonl(tmp_path / METRICS_FILE) == {"loss": {10: 2.5}, "learning_rate": {10: 1e-4}}
    assert not (tmp_path / RUN_INFO).exists()
    assert isinstance(build_tracker(World(), TrackingConfig(tracking_uri="http://h:1"), str(tmp_path)), MlflowTracker)


def test_metrics_record_restarts_for_a_fresh_run_and_continues_on_resume(tmp_path: Path) -> None:
    first = LocalTracker(tmp_path)
    first.start({}, {})
    for step in (1, 2, 3):
        first.log_metrics({"loss": float(step)}, step)
    first.close()
    resumed = LocalTracker(tmp_path)
    resumed.start({}, {}, resume_run_id="abc")
    resumed.log_metrics({"loss": 20.0}, 2)  # a step repeated after resuming from the step-1 checkpoint
    resumed.close()
    assert read_metrics_jsonl(tmp_path / METRICS_FILE) == {"loss": {1: 1.0, 2: 20.0, 3: 3.0}}
    fresh = LocalTracker(tmp_path)
    fresh.start({}, {})
    fresh.log_metrics({"loss": 9.0}, 1)
    fresh.close()
    assert read_metrics_jsonl(tmp_path / METRICS_FILE) == {"loss": {1: 9.0}}


# ---- against a real server ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_arrive_at_their_steps_and_no_secret_reaches_mlflow(
    mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    out = tmp_path / "out"
    out.mkdir()
    config_file = out / "train_config.json"
    config_file.write_text(json.dumps({"hf_token": HF_TOKEN, "db": f"postgresql://bob:{PASSWORD}@db/x", "lr": 1e-4}))
    tracker = MlflowTracker(mlflow_server.uri, "metrics", out, run_name="metrics-run")
    run_id = tracker.start(
        {
            "learning_rate": 1e-4,
            "hf_token": HF_TOKEN,
            "db_url": f"postgresql://bob:{PASSWORD}@db:5432/x",
            "note": f"password is {PASSWORD}",
            "deepspeed": {"optimizer": {"type": "AdamW"}},
        },
        {"owner_auth": PASSWORD, "team": "asr", "comment": f"token {HF_TOKEN}"},
    )
    assert run_id is not None
    for step in range(1, 31):
        tracker.log_metrics({"loss": 10.0 / step, "learning_rate": step * 1e-6}, step)
    tracker.log_artifact(str(config_file))
    tracker.close()

    client = open_client(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == {step: 10.0 / step for step in range(1, 31)}
    assert all(m.timestamp > 0 for m in client.get_metric_history(run_id, "learning_rate"))
    assert json.loads((out / RUN_INFO).read_text())["run_id"] == run_id
    assert read_metrics_jsonl(out / METRICS_FILE)["loss"] == history

    params, tags = run.data.params, run.data.tags
    assert params["learning_rate"] == "0.0001" and params["deepspeed.optimizer.type"] == "AdamW"
    assert params["db_url"] == "postgresql://bob:<redacted>@db:5432/x"
    assert "hf_token" not in params and "owner_auth" not in tags and tags["team"] == "asr"
    artifact_dir = Path(client.download_artifacts(run_id, "", str(tmp_path / "downloaded")))
    artifact_text = (artifact_dir / "train_config.json").read_text()
    assert '"lr": 0.0001' in artifact_text
    everything = json.dumps([params, tags]) + artifact_text
    assert PASSWORD not in everything and HF_TOKEN not in everything


@pytest.mark.slow
def test_resume_continues_the_same_run(mlflow_server, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    first = MlflowTracker(mlflow_server.uri, "resume", out)
    run_id = first.start({"learning_rate": 1e-4, "resume_from_checkpoint": ""}, {"xlsr_dist.kind": "training"})
    for step in range(1, 6):
        first.log_metrics({"loss": float(step)}, step)
    first.close("KILLED")
    client = open_client(mlflow_server.uri)
    assert client.get_run(run_id).info.status == "KILLED"

    second = MlflowTracker(mlflow_server.uri, "resume", out)
    assert (
        second.start(
            {"learning_rate": 1e-4, "resume_from_checkpoint": "latest"},
            {"xlsr_dist.kind": "training"},
            resume_run_id=run_id,
        )
        == run_id
    )
    assert client.get_run(run_id).info.status == "RUNNING"
    for step in range(6, 11):
        second.log_metrics({"loss": float(step)}, step)
    second.close()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id, "loss") == list(range(1, 11))
    assert run.data.params["resume_from_checkpoint"] == ""
    assert run.data.params["resume.resume_from_checkpoint"] == "latest"
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert sorted(read_metrics_jsonl(out / METRICS_FILE)["loss"]) == list(range(1, 11))


@pytest.mark.slow
def test_server_crash_mid_run_loses_and_duplicates_nothing(
    mlflow_server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="xlsr_dist.tracking")
    server = mlflow_server_factory()
    tracker = MlflowTracker(
        server.uri, "outage", tmp_path / "out", flush_timeout_s=120, retry_initial_s=0.2, retry_max_s=1.0
    )
    run_id = tracker.start({"learning_rate": 1e-4}, {})
    slowest = 0.0
    for step in range(1, 41):
        began = time.perf_counter()
        tracker.log_metrics({"loss": 1.0 / step, "eval_wer": 1.0 - step / 100}, step)
        slowest = max(slowest, time.perf_counter() - began)
        if step == 10:
            server.kill()
        if step == 30:
            server.start()  # same port, database and artifact store
        time.sleep(0.05)
    tracker.close()

    client = open_client(server.uri)
    for key in ("loss", "eval_wer"):
        assert _steps(client, run_id, key) == list(range(1, 41)), key
    assert client.get_run(run_id).info.status == "FINISHED"
    warnings = [r for r in caplog.records if "unreachable; buffering" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert not (tmp_path / "out" / UNSENT_FILE).exists()
    # Logging never waited for the network, even with the server gone.
    assert slowest < 0.5


@pytest.mark.slow
def test_server_down_throughout_then_replay_delivers_everything_once(mlflow_server_factory, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    out = tmp_path / "out"
    tracker = MlflowTracker(
        f"http://127.0.0.1:{port}",
        "replay",
        out,
        run_name="offline",
        flush_timeout_s=2,
        retry_initial_s=0.2,
        retry_max_s=0.5,
    )
    began = time.monotonic()
    assert tracker.start({"learning_rate": 1e-4}, {"team": "asr"}) is None
    for step in range(1, 21):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.close("FINISHED")
    assert time.monotonic() - began < 20  # bounded: training is not held up by a dead server
    unsent = [json.loads(line) for line in (out / UNSENT_FILE).read_text().splitlines()]
    assert sum(r["kind"] == "metric" for r in unsent) == 20

    server = mlflow_server_factory(port=port)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    replay = [sys.executable, "-m", "xlsr_dist.tracking", "replay", "--output_dir", str(out)]
    done = subprocess.run(replay, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    run_id = json.loads((out / RUN_INFO).read_text())["run_id"]
    client = open_client(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"
    assert run.data.params["learning_rate"] == "0.0001"
    assert _steps(client, run_id, "loss") == list(range(1, 21))
    assert not (out / UNSENT_FILE).exists()

    # Sending the whole local record again changes nothing: every row is already there, identical.
    again = subprocess.run(replay + ["--all"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _steps(client, run_id, "loss") == list(range(1, 21))


@pytest.mark.slow
def test_local_sqlite_store_keeps_artifacts_in_mlartifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(TrackingConfig())
    tracker = MlflowTracker(uri, "local", tmp_path / "out")
    run_id = tracker.start({"learning_rate": 1e-4}, {})
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.log_artifact(str(note))
    tracker.close()
    assert (tmp_path / "mlflow.db").is_file()
    stored = list((tmp_path / "mlartifacts" / "local").rglob("note.txt"))
    assert len(stored) == 1 and run_id in str(stored[0])
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_launch_script_serves_training_on_the_printed_uri(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW": str(Path(sys.executable).parent / "mlflow")}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "launch" / "mlflow_server.sh"), str(tmp_path / "store")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        uri = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            printed = [line for line in log_path.read_text().splitlines() if line.startswith("MLFLOW_TRACKING_URI=")]
            uri = printed[0].split("=", 1)[1] if printed else ""
            if uri:
                try:
                    open_client(uri).search_experiments(max_results=1)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.5)
        assert uri == f"http://127.0.0.1:{port}", log_path.read_text()
        tracker = MlflowTracker(uri, "launched", tmp_path / "out")
        run_id = tracker.start({"learning_rate": 1e-4}, {})
        tracker.log_metrics({"loss": 1.0}, 1)
        tracker.close()
        assert _steps(open_client(uri), run_id, "loss") == [1]
        assert (tmp_path / "store" / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
