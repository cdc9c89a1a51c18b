"""A real `mlflow server` for tests: 127.0.0.1, a free port, sqlite backend and artifact root in a temporary dir.

The fixtures reach every test module through tests/conftest.py:
``mlflow_server_factory(root=None, port=None)`` starts one (more may be started; all are stopped at teardown),
``mlflow_server`` is one module-scoped server. ``server.kill()`` simulates a crash, ``server.start()`` brings the
same server (port, database, artifacts) back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._net import free_port

START_TIMEOUT_S = 120.0


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.backend_uri = "sqlite:///" + str((self.root / "mlflow.db").resolve())
        self.artifacts_dir = self.root / "artifacts"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> MlflowServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = dict(os.environ)
        # The job runner spawns a pool of huey workers per server: slow to start and nothing here uses it.
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.log_path, "ab")
        # Own session: the server forks a uvicorn worker; stop() signals the whole group by the leader's pid.
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.tail()}")
            if self.healthy():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy on {self.uri} after {timeout_s:.0f} s:\n{self.tail()}")

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged server; waits until the port no longer answers."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        # The uvicorn worker is in the same group; wait for it to let go of the port too.
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=15)
        # Children that ignored SIGTERM after the leader exited.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None

    def tail(self, n: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _factory(base: Path) -> tuple[Callable[..., MlflowServer], list[MlflowServer]]:
    started: list[MlflowServer] = []

    def make(root: Path | None = None, port: int | None = None) -> MlflowServer:
        server = MlflowServer(root or base / f"mlflow-server-{len(started)}", port)
        started.append(server)
        return server.start()

    return make, started


@pytest.fixture
def mlflow_server_factory(tmp_path: Path) -> Iterator[Callable[..., MlflowServer]]:
    make, started = _factory(tmp_path)
    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    make, started = _factory(tmp_path_factory.mktemp("mlflow"))
    server = make()
    yield server
    for s in started:
        s.stop()
