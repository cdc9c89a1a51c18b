"""A real S3-compatible HTTP server for tests: moto's standalone server (the one s3fs's own test-suite uses) on
127.0.0.1 and a free port, as a subprocess.

``s3_server`` (through tests/conftest.py) is one such server per test. ``server.env(secret)`` gives the standard AWS
variables a client process needs to reach it (endpoint, region, access key id, ``secret`` as the secret access key).
The server records every request it answers (method, URL, headers) to ``server.recording``; ``server.requests()``
reads them back, ``server.reset_recording()`` starts a fresh record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._net import free_port

START_TIMEOUT_S = 60.0
ACCESS_KEY_ID = "AKIAXLSRDISTTEST0001"


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.recording = self.root / "requests.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, secret: str) -> dict[str, str]:
        # AWS_ENDPOINT_URL is botocore's own (>= 1.31), so s3fs reaches the server with no s3fs-specific setting.
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self) -> S3Server:
        env = dict(os.environ)
        env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(self.recording), OMP_NUM_THREADS="1")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{self.tail()}")
            if self._up():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server not answering on {self.endpoint} after {START_TIMEOUT_S:.0f} s")

    def reset_recording(self) -> None:
        self.recording.write_text("")

    def requests(self) -> list[dict[str, Any]]:
        """Every request recorded since the last reset: method, url, headers (and body, base64 when binary)."""
        if not self.recording.is_file():
            return []
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None

    def tail(self, n: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()
