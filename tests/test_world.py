"""Which GPU a rank trains on, for the GPU layouts launchers produce (the GPU count is passed in, so these run on
any machine): all GPUs of the node visible to every rank, or one GPU per rank (srun --gpus-per-task=1); and how
ranks leave on a user error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from tests._dist import run_launcher, venv_bin
from tests._net import free_port
from xlsr_dist.config import ConfigError
from xlsr_dist.world import World, cuda_index, export_env, node_id


def _srun_task(local_id: int, tasks_per_node: int, nodes: int = 1) -> World:
    """The World a task started by `srun --ntasks-per-node=T` reads from SLURM's variables."""
    return World.from_env(
        {
            "SLURM_PROCID": str(local_id),
            "SLURM_NTASKS": str(tasks_per_node * nodes),
            "SLURM_LOCALID": str(local_id),
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        }
    )


def test_one_visible_gpu_per_task_is_cuda_0_whatever_the_local_rank() -> None:
    # srun --gpus-per-task=1 / --gpu-bind: each of the 4 tasks sees only its own GPU, as device 0.
    assert [cuda_index(_srun_task(local, 4), visible_gpus=1) for local in range(4)] == [0, 0, 0, 0]


def test_all_gpus_of_the_node_visible_uses_cuda_local_rank() -> None:
    # srun --gpus-per-node=4 with 4 tasks per node, torchrun, deepspeed: every rank sees 4 GPUs.
    assert [cuda_index(_srun_task(local, 4), visible_gpus=4) for local in range(4)] == [0, 1, 2, 3]
    torchrun_rank = World.from_env({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4"})
    assert cuda_index(torchrun_rank, visible_gpus=4) == 2


def test_no_visible_gpu_trains_on_the_cpu() -> None:
    assert cuda_index(_srun_task(1, 2), visible_gpus=0) is None


@pytest.mark.parametrize("local_rank", [0, 2, 3])
def test_more_ranks_per_node_than_visible_gpus_is_a_user_error_naming_the_layout(local_rank: int) -> None:
    # 4 tasks per node, each seeing 2 GPUs (e.g. --gpus-per-task=2): rank 0 fails too, so its message is printed.
    with pytest.raises(ConfigError) as raised:
        cuda_index(_srun_task(local_rank, 4), visible_gpus=2)
    message = str(raised.value)
    assert f"LOCAL_RANK={local_rank} of 4 rank(s)" in message and "sees 2 GPUs" in message
    assert "--gpus-per-task=1" in message and "cuda:LOCAL_RANK" in message


def test_deepspeed_is_told_the_device_index_while_world_keeps_the_node_local_rank() -> None:
    # DeepSpeed's engine sets the CUDA device from LOCAL_RANK; with one GPU per task it must read 0.
    world = _srun_task(3, 4)
    env = {"LOCAL_RANK": "3"}
    export_env(world, env, device=torch.device("cuda", 0))
    assert env["LOCAL_RANK"] == "0" and world.local_rank == 3

    cpu_env = {"LOCAL_RANK": "3"}
    export_env(world, cpu_env, device=torch.device("cpu"))
    assert cpu_env["LOCAL_RANK"] == "3"


_LATE_REPORTER = """
import sys, time
from xlsr_dist.world import World, report_problem
world = World.from_env()
if world.is_main:
    time.sleep(1.5)  # rank 0 finishes its checks later than rank 1 (CI: loading the model, a loaded machine)
report_problem(world, "prog", "--data /nope: no such file or directory", "run")
sys.exit(2)
"""


@pytest.mark.slow
def test_the_reporting_rank_is_not_killed_by_a_silent_rank_that_exits_first(tmp_path: Path) -> None:
    # torchrun, like the DeepSpeed launcher, kills every rank as soon as one exits non-zero.
    script = tmp_path / "late_reporter.py"
    script.write_text(_LATE_REPORTER)
    proc = run_launcher(
        [venv_bin("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)], timeout=120
    )
    both = proc.stdout + proc.stderr
    assert proc.returncode != 0, both[-3000:]
    assert both.count("prog: --data /nope: no such file or directory") == 1, both[-3000:]


def test_the_node_rank_is_the_launchers_and_names_the_node_with_the_machine() -> None:
    base = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    torchrun = World.from_env({**base, "GROUP_RANK": "1"})
    deepspeed = World.from_env({**base, "LOCAL_SIZE": "2", "CROSS_RANK": "1"})
    srun = World.from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"})
    assert [w.node_rank for w in (torchrun, deepspeed, srun)] == [1, 1, 1]
    assert World.from_env(base).node_rank == 1, "no launcher word: the rank's block of LOCAL_WORLD_SIZE ranks"
    # Two nodes on one machine (two launchers with --node_rank 0 and 1): one host, two nodes.
    first = World.from_env({**base, "RANK": "0", "GROUP_RANK": "0"})
    assert node_id(first) != node_id(torchrun)
    assert node_id(torchrun) == node_id(World.from_env({**base, "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}))
    assert node_id(torchrun).startswith(socket.gethostname() + "/")
