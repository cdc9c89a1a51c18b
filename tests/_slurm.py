"""A real one-node SLURM for tests: munged, slurmctld and slurmd from Debian's packages, config, state, spool, logs
and pids in one temporary directory (munge's key and socket in a /tmp directory of their own), on free ports.

The ``slurm_cluster`` fixture (session-scoped) reaches every test module through tests/conftest.py. It
installs nothing: without the binaries (``make system-deps`` installs them) or without root, the tests skip naming
the claim left unproven, or fail under XLSR_REQUIRE_SYSTEM_TESTS=1 (tests/_system.py). The daemons are stopped by
pid at the end of the session, also when a test failed.

The node is this machine under its short hostname with CPUs=4 (more than it has, so 3 or 4 one-CPU tasks fit) and
two GPUs that are /dev/null and /dev/zero (``Gres=gpu:2``), so scripts ask for ``--gpus-per-node`` exactly as on a
GPU cluster. ``cred_expire=10`` lets a requeued job start again after 11 s instead of 121 s. There is no slurmdbd
(sacct needs MariaDB), so job states come from ``scontrol show job`` and the job-completion text file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._net import free_port
from tests._system import cannot_run

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue")
# More CPUs than the machine has (config_overrides lets slurmd accept that): 3 or 4 one-CPU tasks fit on a node.
NODE_CPUS = 4
NODE_GPUS = 2
START_TIMEOUT_S = 60.0
# What the tests on this cluster prove (tests/test_slurm.py), named when they cannot run.
CLAIM = (
    "slurm/train.sbatch under real SLURM (srun ranks, the rank-count check before srun, USR1 -> checkpoint -> "
    "requeue -> resume in the same MLflow run with identical losses)"
)


def missing_binaries() -> list[str]:
    return [
        b for b in (*DAEMONS, *CLIENTS, "mungekey") if shutil.which(b) is None and not Path("/usr/sbin", b).exists()
    ]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def slurm_conf(root: Path, munge_socket: Path, host: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=xlsrtest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job is held before it may start again (cred_expire + 1 s, default 121).
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=3600
SlurmdTimeout=60
SlurmdParameters=config_overrides
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} Gres=gpu:{NODE_GPUS} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    host: str
    munge_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this cluster; SLURM_* of any enclosing job
        removed so the clients talk to this controller only."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, args: list[str], env: Mapping[str, str], cwd: Path) -> int:
        """Submit like a user in ``cwd`` with ``env`` exported to the job; returns the job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", *args], env=self.env(env), cwd=cwd, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.strip()
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_job(
        self,
        job_id: int,
        states: tuple[str, ...] = (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
        ),
        timeout: float = 300,
        poll: float = 0.5,
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info = self.job(job_id)
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout:.0f} s: {info}\n{self.logs()}")

    def wait_node_idle(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            proc = self.run("scontrol", "show", "node", self.host, "-o", check=False)
            state = next((t.split("=", 1)[1] for t in proc.stdout.split() if t.startswith("State=")), proc.stderr)
            if state.startswith("IDLE"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"node {self.host} not idle after {timeout:.0f} s (state {state!r})\n{self.logs()}")

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}\n{self.logs()}")

    def logs(self, lines: int = 25) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            tail = "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"--- {f.name} ---\n{tail}")
        return "\n".join(parts)

    def completion_records(self) -> list[dict[str, str]]:
        """jobcomp/filetxt: one record per finished job attempt (a requeued job has several)."""
        path = self.root / "log" / "jobcomp.txt"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            rec = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    rec[key] = value
            records.append(rec)
        return records

    def stop(self) -> None:
        # Jobs first (their processes are children of slurmd's stepd, not of ours), then the daemons, by pid.
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env(), capture_output=True, timeout=30)
            time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.munge_dir, ignore_errors=True)


def start_cluster(root: Path) -> SlurmCluster:
    host = socket.gethostname().split(".")[0]
    # munged runs as the munge user (it refuses root) and checks that its key and socket dir are not writable by
    # others; pytest's tmp dirs are private to root, so its dir lives directly under /tmp.
    munge_dir = Path(tempfile.mkdtemp(prefix="xlsr-munge-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = SlurmCluster(root=root, host=host, munge_dir=munge_dir)
    pw = pwd.getpwnam("munge")

    def spawn(name: str, cmd: list[str], user: str | None = None) -> None:
        log = open(root / "log" / f"{name}.out", "ab")
        preexec = None
        if user is not None:
            uid, gid = pw.pw_uid, pw.pw_gid

            def preexec() -> None:
                os.setgid(gid)
                os.setuid(uid)

        cluster.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=cluster.env(), start_new_session=True, preexec_fn=preexec
        )
        log.close()

    try:
        for sub in ("etc", "state", f"spool/{host}", "run", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_binary("mungekey"), "--create", "--keyfile", str(munge_dir / "munge.key")],
            check=True,
            capture_output=True,
        )
        for path in (munge_dir, munge_dir / "munge.key"):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(munge_dir, 0o755)
        os.chmod(munge_dir / "munge.key", 0o400)
        cluster.conf.write_text(slurm_conf(root, munge_dir / "munge.socket", host, free_port(), free_port()))
        (root / "etc" / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null,/dev/zero\n")
        spawn(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--key-file",
                str(munge_dir / "munge.key"),
                "--socket",
                str(munge_dir / "munge.socket"),
                "--pid-file",
                str(munge_dir / "munged.pid"),
                "--log-file",
                str(munge_dir / "munged.log"),
                "--seed-file",
                str(munge_dir / "munged.seed"),
            ],
            user="munge",
        )
        deadline = time.monotonic() + 20
        while not (munge_dir / "munge.socket").exists():
            cluster._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("munged did not create its socket in 20 s")
            time.sleep(0.1)
        spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(cluster.conf)])
        spawn("slurmd", [_binary("slurmd"), "-D", "-f", str(cluster.conf)])
        cluster.wait_node_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def skip_reason() -> str:
    missing = missing_binaries()
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}); `make system-deps` installs them"
    if os.geteuid() != 0:
        return "the one-node SLURM runs its daemons as root (SlurmUser=root); run the SLURM tests as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = skip_reason()
    if reason:
        cannot_run(CLAIM, reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
