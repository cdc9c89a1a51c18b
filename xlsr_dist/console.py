"""The console of the commands that run on every rank (train, evaluate): rank 0 logs INFO, the other ranks only
warnings and errors, each line naming its rank, so N ranks print what one would plus what went wrong where."""

from __future__ import annotations

import logging
import sys

from xlsr_dist.world import World

# DeepSpeed and transformers are chatty at INFO on every rank; their warnings still show.
QUIET_LIBRARIES = ("DeepSpeed", "deepspeed", "transformers", "torch.distributed")


def setup_console(world: World) -> None:
    level = logging.INFO if world.is_main else logging.WARNING
    prefix = "" if world.is_main else f"rank {world.rank} "
    logging.basicConfig(
        level=level, format=f"%(asctime)s {prefix}%(levelname)s %(message)s", stream=sys.stderr, force=True
    )
    # On the package's logger too: every xlsr_dist.* logger then follows this level even where something (a test, a
    # program embedding train.main) set that logger's level before.
    logging.getLogger("xlsr_dist").setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
