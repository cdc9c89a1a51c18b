"""One rank of tests/test_node_catalog.py: a TrainStream built under a real gloo process group, and what it holds.

python tests/_node_catalog_rank.py <split> <record, e.g. rank{rank}.json>
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.distributed as dist  # noqa: E402

from tests._many_shards import WORDS  # noqa: E402
from xlsr_dist.atomic import write_json  # noqa: E402
from xlsr_dist.config import DataConfig, plan_batches  # noqa: E402
from xlsr_dist.data import shards  # noqa: E402
from xlsr_dist.data.stream import TrainStream  # noqa: E402
from xlsr_dist.text import build_vocab  # noqa: E402
from xlsr_dist.world import World  # noqa: E402


def mapped_catalog_files() -> list[str]:
    """The node catalog files this process maps (by then unlinked: the kernel still names them)."""
    paths = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if "xlsr_dist-catalog-" in path:
            paths.add(path.removesuffix(" (deleted)"))
    return sorted(paths)


def main(location: str, record: str) -> int:
    world = World.from_env()
    record = record.format(rank=world.rank)
    dist.init_process_group("gloo")
    before = dict(shards.IO_STATS)
    try:
        stream = TrainStream(
            location,
            world,
            plan_batches(8, world.world_size),
            42,
            build_vocab(WORDS),
            DataConfig(dataloader_num_workers=0),
            lambda samples: samples // 320,
        )
    except Exception as exc:
        write_json(record, {"rank": world.rank, "error": f"{type(exc).__name__}: {exc}"})
        return 3
    opened = shards.IO_STATS["files_opened"] - before["files_opened"]
    _, micro = next(stream.steps(stream.initial_state()))
    durations = stream.catalog.durations
    write_json(
        record,
        {
            "rank": world.rank,
            "files_opened_building": opened,
            "row_groups_read": shards.IO_STATS["row_groups_read"] - before["row_groups_read"],
            "fingerprint": stream.fingerprint,
            "utterances": len(stream.catalog),
            "step0": stream.global_batch_ids(0, 0),
            "mine": [uid for batch in micro for uid in batch["ids"]],
            # Arrays over the node's file: not this process's own memory, and read-only.
            "mapped": not durations.flags.owndata and not durations.flags.writeable,
            "catalog_files": mapped_catalog_files(),
        },
    )
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
