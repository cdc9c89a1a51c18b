"""No secret on a command line or in a launcher's log: the multi-node launchers run for real (DeepSpeed's runner in
ssh/pdsh mode with pdsh recorded, torchrun with its ranks) with a canary password in the environment, and the
MLflow server script refuses to serve to the network without a login unless told to."""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.utils.credentials import read_mlflow_creds

from tests._dist import ROOT, free_port
from tests._launchers import recorded_calls, recording_command, run_script, script_env
from xlsr_dist.tracking import open_client

CANARY = "s3cr3t-canary"


def _two_node_hostfile(tmp_path: Path) -> Path:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    return hostfile


def _deepspeed_over_pdsh(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """launch/multinode_deepspeed.sh in ssh mode on two nodes; pdsh (and the runner's ssh reachability check) are
    recorders. Returns the launcher's console output and every pdsh argument list."""
    bin_dir = tmp_path / "bin"
    recording_command(bin_dir, "pdsh")
    recording_command(bin_dir, "ssh")
    launcher_env = script_env(tmp_path / "home", bin_dir, HOSTFILE=str(_two_node_hostfile(tmp_path)), **env)
    proc = run_script("launch/multinode_deepspeed.sh", ["--config", "my.yaml"], launcher_env)
    return proc, recorded_calls(bin_dir, "pdsh")


@pytest.mark.parametrize(
    "secret_env",
    [
        {"MLFLOW_TRACKING_PASSWORD": CANARY},
        {"MLFLOW_TRACKING_TOKEN": CANARY},
        {"MLFLOW_TRACKING_URI": f"https://alice:{CANARY}@mlflow.example"},
        {"HF_TOKEN": CANARY, "DS_FORWARD_ENV": "OMP_NUM_THREADS HF_TOKEN"},
    ],
    ids=["password", "token", "uri-with-password", "forwarded-hf-token"],
)
def test_deepspeed_ssh_mode_never_puts_a_secret_on_the_pdsh_command_line(
    tmp_path: Path, secret_env: dict[str, str]
) -> None:
    proc, pdsh_calls = _deepspeed_over_pdsh(tmp_path, MLFLOW_TRACKING_USERNAME="alice", **secret_env)
    assert not [args for args in pdsh_calls if any(CANARY in a for a in args)], pdsh_calls
    assert CANARY not in proc.stdout
    # Refused before DeepSpeed starts, naming the variable and the way that works.
    assert proc.returncode == 2 and pdsh_calls == [], proc.stdout
    secret_name = next(name for name in secret_env if name != "DS_FORWARD_ENV")
    assert f"error: {secret_name} " in proc.stdout and "~/.mlflow/credentials" in proc.stdout, proc.stdout


def test_a_forwarded_tokenizers_setting_is_not_taken_for_a_token(tmp_path: Path) -> None:
    proc, pdsh_calls = _deepspeed_over_pdsh(
        tmp_path, TOKENIZERS_PARALLELISM="false", DS_FORWARD_ENV="OMP_NUM_THREADS TOKENIZERS_PARALLELISM"
    )
    assert proc.returncode == 0, proc.stdout
    assert len(pdsh_calls) == 1 and "export TOKENIZERS_PARALLELISM=false;" in " ".join(pdsh_calls[0]), pdsh_calls


def test_credentials_file_reaches_mlflow_and_stays_off_the_pdsh_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file the launcher's message describes, on a home every node shares.
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    credentials = home / ".mlflow" / "credentials"
    credentials.write_text(f"[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = {CANARY}\n")
    credentials.chmod(0o600)

    proc, pdsh_calls = _deepspeed_over_pdsh(tmp_path, MLFLOW_TRACKING_URI="https://mlflow.example")
    assert proc.returncode == 0, proc.stdout
    assert len(pdsh_calls) == 1, pdsh_calls
    remote_command = " ".join(pdsh_calls[0])
    # The runner does forward MLFLOW_* this way (so an MLflow secret in the environment would be on this line) ...
    assert "export MLFLOW_TRACKING_URI=https://mlflow.example;" in remote_command
    assert "xlsr_dist.train --resume_from_checkpoint latest --config my.yaml" in remote_command
    # ... and the password, read from the file, is on no command line and in no log.
    assert CANARY not in remote_command and CANARY not in proc.stdout

    # MLflow itself reads that file on the ranks (its environment variables win when set, so they must be unset).
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    creds = read_mlflow_creds()
    assert (creds.username, creds.password) == ("alice", CANARY)
    assert configparser.ConfigParser().read(credentials) == [str(credentials)]


@pytest.mark.slow
def test_torchrun_launcher_keeps_the_secret_in_the_environment(tmp_path: Path) -> None:
    """The rank inherits MLFLOW_TRACKING_PASSWORD from the environment; torchrun's command line, its failure report
    and the rank's own error message never show it."""
    bin_dir = tmp_path / "bin"
    real_torchrun = Path(script_env(tmp_path, tmp_path)["PATH"].split(":")[1]) / "torchrun"
    recording_command(bin_dir, "torchrun", then=f'exec {real_torchrun} "$@"')
    env = script_env(
        tmp_path / "home",
        bin_dir,
        NNODES="1",
        NODE_RANK="0",
        GPUS_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI="https://mlflow.example",
        MLFLOW_TRACKING_USERNAME="alice",
        MLFLOW_TRACKING_PASSWORD=CANARY,
    )
    # A flag file that does not exist: the rank starts, fails its configuration and torchrun reports the failure.
    proc = run_script("launch/multinode_torchrun.sh", ["--config", str(tmp_path / "missing.yaml")], env, timeout=300)
    assert proc.returncode != 0 and "missing.yaml: no such file" in proc.stdout, proc.stdout
    assert "ChildFailedError" in proc.stdout or "exitcode" in proc.stdout, proc.stdout
    torchrun_calls = recorded_calls(bin_dir, "torchrun")
    assert len(torchrun_calls) == 1 and "xlsr_dist.train" in torchrun_calls[0], torchrun_calls
    assert CANARY not in " ".join(torchrun_calls[0]) and CANARY not in proc.stdout


def test_mlflow_server_refuses_the_network_without_a_login(tmp_path: Path) -> None:
    # MLFLOW=false: if the script went on to start a server, it would exit 1 instead of refusing with 2.
    env = script_env(tmp_path / "home", tmp_path / "bin", MLFLOW_HOST="0.0.0.0", MLFLOW="false")
    proc = run_script("launch/mlflow_server.sh", [str(tmp_path / "store")], env, timeout=30)
    assert proc.returncode == 2, proc.stdout
    assert "WARNING: MLFLOW_HOST=0.0.0.0" in proc.stdout and "no login" in proc.stdout
    assert "MLFLOW_APP_NAME=basic-auth" in proc.stdout and "--unauthenticated" in proc.stdout
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_mlflow_server_serves_the_network_unauthenticated_only_when_told(tmp_path: Path) -> None:
    port = free_port()
    env = script_env(tmp_path / "home", tmp_path / "bin", MLFLOW_HOST="0.0.0.0", MLFLOW_PORT=str(port))
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "launch" / "mlflow_server.sh"), "--unauthenticated", str(tmp_path / "store")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        answered = False
        while time.monotonic() < deadline and proc.poll() is None and not answered:
            try:
                open_client(f"http://127.0.0.1:{port}").search_experiments(max_results=1)
                answered = True
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        output = log_path.read_text()
        assert answered, output
        assert "WARNING: MLFLOW_HOST=0.0.0.0" in output and "no login" in output
        assert f"listening on 0.0.0.0:{port}" in output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
