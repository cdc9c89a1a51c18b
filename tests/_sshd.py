"""A real OpenSSH server on a free port of 127.0.0.1, with host and user keys made for the test, and an `ssh` for PATH
that reaches it with them: what launch/multinode_deepspeed.sh needs to start every node's ranks over ssh (pdsh), for
"nodes" that are names of this machine (127.0.0.1, localhost). Needs sshd and pdsh (`make system-deps` installs
openssh-server and pdsh) and root (sshd switches to the logged-in user)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._net import free_port
from tests._system import cannot_run

SSHD = "/usr/sbin/sshd"
CLAIM = "two nodes started over ssh by launch/multinode_deepspeed.sh (pdsh)"


@dataclass(frozen=True)
class LocalSsh:
    bin_dir: Path  # holds `ssh`: the client with this server's port and the test's key; put it first on PATH
    port: int


def _missing() -> str:
    if not os.path.exists(SSHD) or shutil.which("pdsh") is None or shutil.which("ssh-keygen") is None:
        return "openssh-server or pdsh not installed (make system-deps)"
    if os.geteuid() != 0:
        return "sshd must run as root to log in"
    return ""


def _write_configs(root: Path, port: int) -> tuple[Path, Path]:
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    server = root / "sshd_config"
    # StrictModes off: the keys live under the test's temporary directory, not in a home directory sshd would vet.
    server.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n"
    )
    client = root / "ssh_config"
    client.write_text(
        f"Host *\n  Port {port}\n  IdentityFile {root / 'user_key'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n"
    )
    return server, client


@pytest.fixture(scope="session")
def local_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSsh]:
    reason = _missing()
    if reason:
        cannot_run(CLAIM, reason)
    root = tmp_path_factory.mktemp("sshd")
    port = free_port()
    server_config, client_config = _write_configs(root, port)
    # What the package's service unit would create: sshd refuses to start without its privilege separation dir.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(root / "sshd.log", "wb")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(server_config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if sshd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        # pdsh and DeepSpeed's runner call `ssh` from PATH; OpenSSH reads ~/.ssh/config from the passwd entry, not
        # $HOME, so the test's settings come with the command instead.
        (bin_dir / "ssh").write_text(f'#!/bin/bash\nexec /usr/bin/ssh -F {client_config} "$@"\n')
        (bin_dir / "ssh").chmod(0o755)
        yield LocalSsh(bin_dir, port)
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        log.close()
