"""The canary: a real two-rank training run, its MLflow password in the environment and inside its tracking URI,
leaves that password nowhere: not in a param or tag of its MLflow run, not in any file under its --output_dir or the
server's store, not in the console of either rank.

The ranks are started by torchrun, which prints nothing of its command line. (DeepSpeed's launcher logs its whole
command line, `cmd = ... --tracking_uri http://alice:PASSWORD@...`: a password given in a flag is on a command
line by the user's own choice; the environment or ~/.mlflow/credentials keep it off, see launch/README.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._dist import base_env, run_launcher, venv_bin
from tests._net import free_port
from tests._runs import mlflow_runs, tiny_flags
from tests._secrets import files_holding

pytestmark = pytest.mark.slow

CANARY = "s3cr3t-canary"
REDACTED_URI = "http://alice:<redacted>@127.0.0.1:{port}"


def test_a_byte_search_finds_a_string_pickled_into_a_checkpoint_file(tmp_path: Path) -> None:
    # Why the walk below may read checkpoints as bytes: torch.save stores its pickle uncompressed in the zip.
    torch.save({"module": {"w": torch.zeros(3)}, "note": f"uri {CANARY}"}, tmp_path / "mp_rank_00_model_states.pt")
    assert files_holding(tmp_path, CANARY) == [tmp_path / "mp_rank_00_model_states.pt"]


def test_training_leaves_the_password_in_no_param_tag_file_or_console(mlflow_server_factory, tmp_path: Path) -> None:
    server = mlflow_server_factory()
    uri_with_password = f"http://alice:{CANARY}@127.0.0.1:{server.port}"
    out = tmp_path / "out"
    proc = run_launcher(
        [
            venv_bin("torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "xlsr_dist.train",
            *tiny_flags(out, uri_with_password, max_steps=4, eval_steps=4, save_steps=4),
        ],
        timeout=600,
        env=base_env(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=CANARY),
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]

    # The run really reached the server, through the URI that held the password.
    runs = mlflow_runs(server.uri)
    assert len(runs) == 1, runs
    run = runs[0]
    params, tags = run.data.params, run.data.tags
    assert params["tracking_uri"] == REDACTED_URI.format(port=server.port)
    assert params["world_size"] == "2" and tags["xlsr_dist.kind"] == "training"
    assert [key for key, value in {**params, **tags}.items() if CANARY in key or CANARY in value] == []

    # What the run wrote, checked as written and then byte by byte (checkpoints included).
    train_config = json.loads((out / "train_config.json").read_text())
    run_info = json.loads((out / "run_info.json").read_text())
    assert train_config["tracking_uri"] == REDACTED_URI.format(port=server.port)
    assert run_info == {
        "run_id": run.info.run_id,
        "tracking_uri": REDACTED_URI.format(port=server.port),
        "experiment": "e2e",
    }
    assert (out / "metrics.jsonl").stat().st_size > 0 and list((out / "checkpoints").glob("step-*/*.pt"))
    assert files_holding(out, CANARY) == []
    assert files_holding(server.root, CANARY) == []  # its database, artifacts and log

    assert CANARY not in console
