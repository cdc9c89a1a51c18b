"""Problems with the data that only show once the shards are read: a training split with fewer usable utterances
than one global batch (every utterance skipped included), an eval split with none.

Every rank reads the same catalog, so every rank finds the same problem at the same point, after the same
collectives: each raises DataProblem, and the command (train.main) has rank 0 say it once, as it says configuration
errors, and every rank exit with status 2. The message names the flag, the counts and what would work.
"""

from __future__ import annotations

from collections.abc import Mapping

from xlsr_dist.config import REFERENCE_GLOBAL_BATCH
from xlsr_dist.data.skip_reasons import LONGER_THAN_MAX, SHORTER_THAN_MIN


class DataProblem(ValueError):
    """A user's data cannot train or evaluate under these flags; ``flag`` is the one that names the data."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        super().__init__(message)


def _filter_fixes(skipped: Mapping[str, int]) -> list[str]:
    """What keeps more of the split, for the skip reasons that are the run's own filters."""
    fixes = []
    if skipped.get(LONGER_THAN_MAX):
        fixes.append(f"a larger --max_duration_in_seconds ({skipped[LONGER_THAN_MAX]} utterance(s) are longer)")
    if skipped.get(SHORTER_THAN_MIN):
        fixes.append(f"a smaller --min_duration_in_seconds ({skipped[SHORTER_THAN_MIN]} utterance(s) are shorter)")
    return fixes


def too_few_to_train(
    location: str, usable: int, skipped: Mapping[str, int], described: str, global_batch: int, world_size: int
) -> DataProblem:
    """--train_data holds fewer usable utterances than one global batch: not one optimizer step per epoch."""
    fixes = _filter_fixes(skipped)
    recipe = " (the reference recipe's global batch)" if global_batch == REFERENCE_GLOBAL_BATCH else ""
    fixes.append(f"more training data: at least {global_batch} usable utterances{recipe}")
    fits = [size for size in range(usable, 0, -1) if size % world_size == 0]
    if fits:
        fixes.append(
            f"leaving the reference recipe, --global_batch_size {fits[0]} (at most the {usable} usable utterance(s), "
            f"a multiple of the {world_size} rank(s))"
        )
    elif usable:
        fixes.append(f"fewer ranks than the {world_size} started, with a smaller --global_batch_size")
    return DataProblem(
        "--train_data",
        f"--train_data {location}: {usable} usable utterance(s) ({described}), fewer than one global batch of "
        f"{global_batch}. What would work: {'; or '.join(fixes)}",
    )


def nothing_to_evaluate(location: str, skipped: Mapping[str, int], described: str) -> DataProblem:
    """--eval_data holds no usable utterance."""
    fixes = [*_filter_fixes(skipped), "an eval split with usable utterances"]
    return DataProblem(
        "--eval_data",
        f"--eval_data {location}: no usable utterance ({described}). What would work: {'; or '.join(fixes)}",
    )
