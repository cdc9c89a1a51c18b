"""The only place that reads RANK / LOCAL_RANK / WORLD_SIZE and touches the process group.

Launchers (deepspeed, torchrun, srun, plain python) describe the world differently; ``World.from_env`` turns each
into one small value that the rest of the code receives as an argument.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xlsr_dist.config import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    # The node's number as the launcher gave it (torchrun's GROUP_RANK, DeepSpeed's CROSS_RANK, SLURM_NODEID); None
    # when it gave none.
    launcher_node_rank: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def node_rank(self) -> int:
        """Which node of the job this rank runs on: the launcher's word, else the rank's block of local ranks."""
        if self.launcher_node_rank is not None:
            return self.launcher_node_rank
        return self.rank // max(1, self.local_world_size)

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> World:
        """Read the launcher's variables; SLURM's are used when a bare `srun python -m ...` started us."""
        e = os.environ if env is None else env
        if "RANK" in e and "WORLD_SIZE" in e:
            rank, world = int(e["RANK"]), int(e["WORLD_SIZE"])
            local = int(e.get("LOCAL_RANK", rank))
            local_world = int(e.get("LOCAL_WORLD_SIZE", e.get("LOCAL_SIZE", world)))
            node = e.get("GROUP_RANK", e.get("CROSS_RANK"))
        elif "SLURM_PROCID" in e and "SLURM_NTASKS" in e:
            rank, world = int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"])
            local = int(e.get("SLURM_LOCALID", 0))
            local_world = int(e.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0] or 1)
            node = e.get("SLURM_NODEID")
        else:
            rank, world, local, local_world, node = 0, 1, 0, 1, None
        return World(
            rank=rank,
            local_rank=local,
            world_size=world,
            local_world_size=local_world,
            launcher_node_rank=int(node) if node else None,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export_env(world: World, env: MutableMapping[str, str] | None = None, device: torch.device | None = None) -> None:
    """Make the environment say what ``world`` says, so deepspeed.init_distributed does not go looking for mpi4py
    when started by plain python or a bare srun."""
    e = os.environ if env is None else env
    e.setdefault("RANK", str(world.rank))
    e.setdefault("LOCAL_RANK", str(world.local_rank))
    if device is not None and device.type == "cuda":
        # DeepSpeed takes LOCAL_RANK as the CUDA device index (engine set_device, init_process_group's device_id);
        # with one GPU per task that index is 0 whatever the node-local rank. World keeps the node-local rank.
        e["LOCAL_RANK"] = str(device.index)
    e.setdefault("WORLD_SIZE", str(world.world_size))
    e.setdefault("LOCAL_WORLD_SIZE", str(world.local_world_size))
    if "MASTER_ADDR" not in e:
        nodes = e.get("SLURM_JOB_NODELIST", "")
        e["MASTER_ADDR"] = first_host(nodes) if (nodes and world.world_size > 1) else "127.0.0.1"
    if "MASTER_PORT" not in e:
        job = e.get("SLURM_JOB_ID")
        e["MASTER_PORT"] = str(port_for_job(int(job))) if job else str(_free_port())


def port_for_job(job_id: int) -> int:
    """A rendezvous port derived from the SLURM job id, so concurrent jobs on one node do not collide."""
    return 15000 + job_id % 20000


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-005,007],cpu1' -> 'gpu003'."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    first = rest.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


# The two GPU layouts a rank can be started in; named in the error for any other.
SUPPORTED_GPU_LAYOUTS = (
    "every rank sees all GPUs of its node and uses cuda:LOCAL_RANK (torchrun, deepspeed, srun --gpus-per-node=G "
    "with G tasks per node), or every rank sees exactly one GPU and uses it (srun --gpus-per-task=1, --gpu-bind, "
    "CUDA_VISIBLE_DEVICES set per rank)"
)


def cuda_index(world: World, visible_gpus: int) -> int | None:
    """The CUDA device this rank trains on, given how many GPUs it sees; None means no GPU: train on the CPU.

    Under `srun --gpus-per-task=1` (or --gpu-bind) every task sees only its own GPU as cuda:0 while LOCAL_RANK still
    counts the tasks of the node, so asking for cuda:LOCAL_RANK would fail with "invalid device ordinal".
    """
    if visible_gpus <= 0:
        return None
    if visible_gpus == 1:
        return 0
    # local_world_size too, so every rank of the node, its first one included, sees a wrong layout and that one
    # reports it; a LOCAL_RANK beyond LOCAL_WORLD_SIZE is known to this rank alone, which then reports it itself.
    if max(world.local_rank + 1, world.local_world_size) > visible_gpus:
        raise ConfigError(
            [
                f"GPU layout: rank {world.rank} has LOCAL_RANK={world.local_rank} of {world.local_world_size} rank(s) "
                f"on its node but sees {visible_gpus} GPUs, so ranks would share or miss a GPU. Supported: "
                f"{SUPPORTED_GPU_LAYOUTS}. (A launcher that does not set LOCAL_WORLD_SIZE: set it.)"
            ],
            scope="node" if world.local_world_size > visible_gpus else "rank",
        )
    return world.local_rank


# How long a rank that found a problem but leaves the telling to another waits before it exits. The DeepSpeed
# launcher, torchrun and `srun --kill-on-bad-exit` kill every rank once the first exits non-zero: a silent rank that
# finished its checks a moment sooner would get the reporting rank killed before it printed: exit status 2 and no
# message at all. The reporting rank exits straight after printing, so under those launchers this wait is cut short.
SILENT_RANK_GRACE_S = 5.0


def report_problem(world: World, prog: str, message: str, scope: str) -> None:
    """A user error as one message on stderr, without traceback, from the ranks that can see it (ConfigError.scope):
    rank 0 for the flags ("run"), each node's first rank for what its machine sees ("node"), the rank itself for its
    own environment ("rank"). A rank other than 0 names itself and its host: its problem may be one rank 0 lacks.
    The ranks that stay silent return only after SILENT_RANK_GRACE_S, so that they never exit first."""
    if scope == "run":
        reports = world.is_main
    elif scope == "node":
        reports = world.is_local_main or world.is_main
    else:
        reports = True
    if reports:
        where = "" if world.is_main else f"rank {world.rank} on {socket.gethostname()}: "
        print(f"{prog}: {where}{message}", file=sys.stderr, flush=True)
    else:
        time.sleep(SILENT_RANK_GRACE_S)


def visible_gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_for(world: World) -> torch.device:
    index = cuda_index(world, visible_gpu_count())
    if index is None:
        return torch.device("cpu")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(world: World, device: torch.device, timeout_s: int) -> None:
    """Start the process group through DeepSpeed (it needs its own comm layer initialised)."""
    import deepspeed

    export_env(world, device=device)
    # A dead peer must turn into an error on every other rank, not an endless wait inside NCCL.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if device.type == "cpu":
        _skip_shared_memory_all_reduce()
    deepspeed.init_distributed(
        dist_backend=backend_for(device),
        timeout=datetime.timedelta(seconds=timeout_s),
        verbose=False,
    )


def _skip_shared_memory_all_reduce() -> None:
    """On CPU, DeepSpeed's comm layer JIT-compiles its shared-memory all-reduce op at start-up, ~25 s of C++ on two
    cores whenever the torch_extensions cache misses (a fresh machine, another venv path). Only inference_all_reduce
    uses it, never training (ZeRO reduces through torch.distributed), so it is marked unavailable, as on a platform
    without it: the comm layer then starts without building it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a small vector across ranks (float64 so counts of errors/words stay exact)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=device).clone()
    if is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def all_reduce_max(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=device).clone()
    if is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t


def node_id(world: World) -> str:
    """What names this rank's node among the job's nodes: the machine (host name and boot id: two containers may share
    a name) and the node rank its launcher gave it. The machine alone cannot tell two launchers' nodes apart on one
    host (two `torchrun --node_rank` on one machine, or nodes that are containers sharing a kernel), whose ranks must
    not share node-local files; the node rank alone would merge nodes of a launcher that numbers none."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}/node{world.node_rank}"


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small and picklable), in rank order; ``[obj]`` without a process group."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# What gloo and NCCL say when the process at the other end of a collective is gone or stuck.
_PEER_FAILURE_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "third_party/gloo",
    "NCCL",
    "Timed out",
    "timed out",
    "Socket Timeout",
)
_PEER_ADDRESS = re.compile(r"\[([0-9A-Za-z.:-]+)\]:(\d+)")


def is_peer_failure(exc: BaseException) -> bool:
    """True for an error raised by a collective because another rank died, was killed or stopped answering."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_FAILURE_MARKERS)


def describe_peer_failure(exc: BaseException) -> str:
    """One line for the log: the backend's message, led by the peer's host when the message names it (gloo does;
    the port is the connection's, so the host is what tells nodes apart)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
    match = _PEER_ADDRESS.search(first)
    return f"peer host {match.group(1)}: {first}" if match else first


def shutdown() -> None:
    """End the process group init() started, through DeepSpeed as it was started: that also drops the groups DeepSpeed
    cached from it, which a later init in the same process (a second run in one interpreter) would otherwise use."""
    if is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()


def finish() -> None:
    """Leave the process group together on the success path: a rank that tears gloo down while a peer is still in its
    last collective aborts that peer ("terminate called without an active exception"). Not for error paths, where a
    dead peer would make the barrier wait for its timeout."""
    barrier()
    shutdown()
