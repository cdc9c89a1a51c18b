"""Two nodes on one machine, for real: two launchers with node ranks 0 and 1 meeting at 127.0.0.1, 2 ranks each (as
two 2-GPU nodes would run), through torchrun, launch/multinode_torchrun.sh and launch/multinode_deepspeed.sh (over a
real sshd and pdsh, tests/_sshd.py).

What one node cannot show: each node builds its own catalog once and its ranks map that copy, not the other node's
(node identity is the machine and the launcher's node rank, xlsr_dist/world.py node_id); the 4 ranks of 2 nodes log
the per-step losses of one node's 4 ranks (fp32, rel 1e-5); a rank killed on node 1 takes node 0 down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests._dist import HungRanks, base_env, start_launcher, venv_bin, wait_launchers
from tests._many_shards import write_split
from tests._net import free_port
from tests._resume import STEPS, Reference, train
from tests._runs import metrics_by_step, tiny_flags
from tests._sshd import LocalSsh

pytestmark = pytest.mark.slow

NODES, RANKS_PER_NODE = 2, 2
KILL_TAKES_NODE_0_DOWN_S = 60


def _torchrun(node: int, port: int, *args: str) -> list[str]:
    return [venv_bin("torchrun"), "--nnodes", str(NODES), "--node_rank", str(node)] + [
        "--nproc_per_node",
        str(RANKS_PER_NODE),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "--max_restarts",
        "0",
        *args,
    ]


def _script_env(node: int, port: int) -> dict[str, str]:
    """launch/multinode_torchrun.sh's settings for ``node``; torchrun from this venv first on PATH."""
    return base_env(
        NNODES=str(NODES),
        NODE_RANK=str(node),
        GPUS_PER_NODE=str(RANKS_PER_NODE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PATH=f"{Path(venv_bin('torchrun')).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )


def _start_torchrun_script(tmp_path: Path, flags: list[str]) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    port = free_port()
    logs = [tmp_path / f"node{n}.log" for n in range(NODES)]
    cmd = ["bash", "launch/multinode_torchrun.sh", *flags]
    return [start_launcher(cmd, logs[n], env=_script_env(n, port)) for n in range(NODES)], logs


def _assert_ok(codes: list[int], logs: list[Path]) -> None:
    assert codes == [0] * len(codes), "\n".join(f"--- {p.name} ---\n{p.read_text()[-3000:]}" for p in logs)


@pytest.fixture(scope="module")
def one_node_4_ranks(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("one_node")
    train(root / "out", root / "mlflow.db", NODES * RANKS_PER_NODE, root / "logs")
    return Reference(root / "out", root / "mlflow.db", metrics_by_step(root / "out", "loss"))


def _assert_one_node_losses(out: Path, reference: Reference, what: str) -> None:
    losses = metrics_by_step(out, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1)), losses
    worst = max(abs(losses[s] - reference.losses[s]) / abs(reference.losses[s]) for s in losses)
    print(f"{what}: max relative loss difference to one node's 4 ranks {worst:.3g}")
    for step in losses:
        assert losses[step] == pytest.approx(reference.losses[step], rel=1e-5), step


def test_each_node_builds_its_own_catalog_once_and_its_ranks_map_it(tmp_path: Path) -> None:
    split = write_split(tmp_path / "split" / "train", 600, 3, row_group_size=64)
    port = free_port()
    tmp = [tmp_path / f"node{n}_tmp" for n in range(NODES)]  # each node's own $TMPDIR, as on two machines
    logs = [tmp_path / f"node{n}.log" for n in range(NODES)]
    procs = []
    for n in range(NODES):
        tmp[n].mkdir()
        cmd = _torchrun(n, port, "tests/_node_catalog_rank.py", split, str(tmp_path / "rank{rank}.json"))
        procs.append(start_launcher(cmd, logs[n], env=base_env(TMPDIR=str(tmp[n]))))
    _assert_ok(wait_launchers(procs, logs, timeout=300), logs)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(NODES * RANKS_PER_NODE)]
    # Each node's first rank (global ranks 0 and 2) read the 3 shards' metadata; no other rank opened one.
    assert [r["files_opened_building"] for r in records] == [3, 0, 3, 0]
    # Every rank maps exactly one catalog file, its own node's (from that node's $TMPDIR), none the other node's.
    for r in records:
        node = r["rank"] // RANKS_PER_NODE
        assert len(r["catalog_files"]) == 1 and Path(r["catalog_files"][0]).parent == tmp[node], r
    assert records[0]["catalog_files"] != records[2]["catalog_files"]
    # Two copies, one plan: the same corpus and global batch on every rank, each rank its own share of it.
    assert len({r["fingerprint"] for r in records}) == 1 and records[0]["utterances"] == 600
    assert len({tuple(r["step0"]) for r in records}) == 1
    assert sorted(uid for r in records for uid in r["mine"]) == sorted(records[0]["step0"])
    # Each node's copy is removed once its ranks mapped it (torchrun keeps its own files there).
    assert [list(t.glob("xlsr_dist-catalog-*")) for t in tmp] == [[], []]


def test_two_torchrun_nodes_log_the_losses_of_one_node(one_node_4_ranks: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs, logs = _start_torchrun_script(tmp_path, tiny_flags(out, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    _assert_ok(wait_launchers(procs, logs, timeout=600), logs)
    assert "world 4 rank(s): global batch 8 = 2 micro x 1 accumulation x 4 rank(s)" in logs[0].read_text()
    _assert_one_node_losses(out, one_node_4_ranks, "launch/multinode_torchrun.sh, 2 nodes x 2")


def test_two_deepspeed_nodes_over_ssh_log_the_losses_of_one_node(
    local_ssh: LocalSsh, one_node_4_ranks: Reference, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"127.0.0.1 slots={RANKS_PER_NODE}\nlocalhost slots={RANKS_PER_NODE}\n")
    out = tmp_path / "out"
    env = base_env(
        HOSTFILE=str(hostfile),
        MASTER_PORT=str(free_port()),
        # What the ranks on the other "node" need of this shell (the script forwards these names only).
        DS_FORWARD_ENV="OMP_NUM_THREADS OMP_WAIT_POLICY",
        PATH=f"{local_ssh.bin_dir}:{Path(venv_bin('deepspeed')).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    log = tmp_path / "launcher.log"
    flags = tiny_flags(out, f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = start_launcher(["bash", "launch/multinode_deepspeed.sh", *flags], log, env=env)
    _assert_ok(wait_launchers([proc], [log], timeout=600), [log])
    text = log.read_text()
    # pdsh ran the launcher on both hosts, each with its own node rank.
    assert "pdsh -S -f 1024 -w 127.0.0.1,localhost" in text, text[-3000:]
    assert "world 4 rank(s): global batch 8 = 2 micro x 1 accumulation x 4 rank(s)" in text
    _assert_one_node_losses(out, one_node_4_ranks, "launch/multinode_deepspeed.sh over ssh, 2 nodes x 2")


def _rank_processes(launcher_pid: int) -> dict[int, int]:
    """{global rank: pid} of the ranks a torchrun started (its children that run xlsr_dist.train)."""
    found = {}
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = dict(
                item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
            )
            if "RANK" in env:
                found[int(env["RANK"])] = int(pid)
    return found


def test_a_rank_killed_on_node_1_takes_node_0_down_within_60_s(tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = tiny_flags(out, f"sqlite:///{tmp_path / 'mlflow.db'}", max_steps=5000, eval_steps=5000, save_steps=5000)
    procs, logs = _start_torchrun_script(tmp_path, flags)
    try:
        deadline = time.monotonic() + 300
        while len(metrics_by_step(out, "loss")) < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            time.sleep(0.5)
        ranks = _rank_processes(procs[1].pid)
        assert sorted(ranks) == [2, 3], ranks
        os.kill(ranks[3], signal.SIGKILL)
        killed = time.monotonic()
        codes = wait_launchers(procs, logs, timeout=KILL_TAKES_NODE_0_DOWN_S)
    except HungRanks as hung:
        raise AssertionError(f"node 0 still ran {KILL_TAKES_NODE_0_DOWN_S} s after a rank on node 1 died") from hung
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    print(f"both nodes down {time.monotonic() - killed:.1f} s after the kill, exit statuses {codes}")
    assert codes[0] != 0 and codes[1] != 0, codes
    node0 = logs[0].read_text()
    assert "a collective failed, a peer rank probably died or was killed" in node0, node0[-3000:]
    assert len(metrics_by_step(out, "loss")) < 5000
