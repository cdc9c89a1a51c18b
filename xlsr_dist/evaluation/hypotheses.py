"""The hypotheses file of an evaluated set: one JSON line per utterance, sorted by id, written by rank 0 from the
part files every rank writes for its own share.

Each line holds id, reference, hypothesis, seconds, word_errors, words, char_errors, chars, loss (null where the
labels allowed none). Ranks meet through files rather than a gather of Python objects through the process group:
the parts must be on a filesystem every rank sees (as checkpoints must), and rank 0 reads them only after a
collective that every rank enters once its part is written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from xlsr_dist import atomic
from xlsr_dist.evaluation.scoring import UtteranceScore

FILE_NAME = "hypotheses.jsonl"
PARTS_DIR = ".parts"


class MissingPartError(RuntimeError):
    pass


def part_path(set_dir: str | Path, rank: int) -> Path:
    return Path(set_dir) / PARTS_DIR / f"rank-{rank:05d}.jsonl"


def _lines(scores: Iterable[UtteranceScore]) -> str:
    return "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in scores)


def write_part(set_dir: str | Path, rank: int, scores: Iterable[UtteranceScore]) -> Path:
    path = part_path(set_dir, rank)
    atomic.write_text(path, _lines(scores))
    return path


def read(path: str | Path) -> list[UtteranceScore]:
    return [UtteranceScore.from_dict(json.loads(line)) for line in Path(path).read_text().splitlines() if line]


def merge_parts(set_dir: str | Path, world_size: int) -> list[UtteranceScore]:
    """Rank 0, after every rank wrote its part: the parts of ranks 0..world_size-1 -> FILE_NAME (by id); the parts
    are removed. Raises MissingPartError naming the ranks whose part is not visible here."""
    root = Path(set_dir)
    missing = [r for r in range(world_size) if not part_path(root, r).is_file()]
    if missing:
        raise MissingPartError(
            f"the results of rank(s) {missing} are not under {root / PARTS_DIR}: --output_dir must be on a "
            f"filesystem every rank sees"
        )
    scores = sorted((s for r in range(world_size) for s in read(part_path(root, r))), key=lambda s: s.id)
    atomic.write_text(root / FILE_NAME, _lines(scores))
    shutil.rmtree(root / PARTS_DIR, ignore_errors=True)
    return scores
