"""This rank's share of every optimizer step, read straight from the shards, with a tiny global resume state.

The small metadata columns of all shards (ids, durations, transcripts) and the audio positions of their byte
indexes are read once per node (``data/node_catalog.py``: the node's other ranks map that copy), filtered and
sorted by id: that canonical order does not depend on how the corpus was cut into shards. The epoch plan
(partition.epoch_batches) is a pure function of it and of (seed, epoch, global batch, bucketing), so all ranks -- of
this run, or of an earlier run at another world size -- agree on which utterances form step k. Each rank then reads
from the shards only the audio of its own micro-batches (shards.read_audio: one ranged read per utterance).

The resume state (DataState) is global -- (seed, epoch, step in epoch) plus the global batch and a fingerprint of
the filtered corpus -- not per rank, so a run may resume on any world size; resuming costs one plan computation,
no replay of the steps already taken.

Skipped utterances (duration out of range, empty or unalignable transcript, duplicate id: the reasons in
``xlsr_dist.data.skip_reasons``) are listed in ``.report`` as {id, reason} and counted in ``.skipped``; an item
whose audio fails to decode during training is dropped from its micro-batch with a warning naming it (see
collate.dummy_item for a micro-batch left empty).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xlsr_dist.audio import AudioError, decode_bytes
from xlsr_dist.config import BatchPlan, DataConfig
from xlsr_dist.config.tree import parse_train_sets
from xlsr_dist.data import mixing, node_catalog, problems, shards
from xlsr_dist.data.augment import Augmentation
from xlsr_dist.data.catalog import Catalog, build_catalog, concatenate
from xlsr_dist.data.collate import Batch, Item, collate, collate_with_time_masks, dummy_item
from xlsr_dist.data.partition import PADDING_SLOT, epoch_batches, eval_rank_batches, rank_micro_batches
from xlsr_dist.data.specaugment import TimeMasking
from xlsr_dist.world import World

log = logging.getLogger(__name__)

STATE_VERSION = 1


class DataStateError(ValueError):
    """A saved data state that cannot continue this run (other seed, global batch or corpus)."""


@dataclass(frozen=True)
class DataState:
    """Where the data stream stands, the same on every rank: the next step to run is ``step_in_epoch`` of
    ``epoch``. ``fingerprint`` identifies the filtered corpus the plan was made from."""

    version: int
    seed: int
    epoch: int
    step_in_epoch: int
    global_batch: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DataState:
        names = [f.name for f in dataclasses.fields(DataState)]
        missing = [n for n in names if n not in d]
        if missing:
            raise DataStateError(f"data state {d!r} lacks {missing}; was it written by xlsr_dist?")
        if d["version"] != STATE_VERSION:
            raise DataStateError(
                f"data state version {d['version']} is not {STATE_VERSION}, the one this version of xlsr_dist reads"
            )
        try:
            state = DataState(
                version=int(d["version"]),
                seed=int(d["seed"]),
                epoch=int(d["epoch"]),
                step_in_epoch=int(d["step_in_epoch"]),
                global_batch=int(d["global_batch"]),
                fingerprint=str(d["fingerprint"]),
            )
        except (TypeError, ValueError) as e:
            raise DataStateError(f"data state {d!r} is malformed: {e}") from e
        if state.epoch < 0 or state.step_in_epoch < 0 or state.global_batch < 1:
            raise DataStateError(f"data state {d!r} has a negative position or a global batch < 1")
        return state


class UtteranceDataset(Dataset):
    """Catalog index -> Item, reading only that utterance's row group; batched reads group rows by shard.

    Forked DataLoader workers each get their own open-file cache (shards keys it by process id). ``augment``
    (training only) perturbs each decoded wave: (utterance id, wave, labels) -> wave.
    """

    def __init__(
        self, catalog: Catalog, augment: Callable[[str, np.ndarray, list[int]], np.ndarray] | None = None
    ) -> None:
        self.catalog = catalog
        self.augment = augment

    def __len__(self) -> int:
        return len(self.catalog)

    def __getitem__(self, index: int) -> Item:
        items = self.__getitems__([index])
        return items[0]

    def _audio(self, shard: int, members: list[int]) -> list[bytes]:
        """The audio of catalog entries ``members`` (all in ``shard``): at the positions the catalog listed when it
        has them (one ranged read each), else through the shard's rows, checked against the catalog's ids."""
        c = self.catalog
        path = c.shard_paths[shard]
        if c.shard_digests[shard] and all(c.blob_length[i] >= 0 for i in members):
            blobs = shards.read_audio(
                path,
                c.shard_digests[shard],
                [int(c.blob_offset[i]) for i in members],
                [int(c.blob_length[i]) for i in members],
            )
            if blobs is not None:
                return blobs
        rows = shards.read_rows(path, [int(c.row[i]) for i in members])
        for i, row in zip(members, rows):
            if row["id"] != c.ids[i]:
                # The metadata this plan was made from no longer describes the file: continuing would train on
                # wrong transcripts.
                raise shards.ShardError(
                    f"{path} row {int(c.row[i])} holds {row['id']!r}, expected {c.ids[i]!r}: "
                    f"the shard changed after training started; restart the run"
                )
        return [row["audio"] for row in rows]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        c = self.catalog
        idx = [int(i) for i in indices]
        real = [i for i in idx if i != PADDING_SLOT]
        wanted_by_shard: dict[int, list[int]] = {}
        for i in real:
            wanted_by_shard.setdefault(int(c.shard[i]), []).append(i)
        fetched: dict[int, Item | None] = {}
        for s, members in wanted_by_shard.items():
            for i, blob in zip(members, self._audio(s, members)):
                try:
                    wave = decode_bytes(blob)
                except AudioError as e:
                    log.warning("skipping utterance %s: its audio does not decode (%s)", c.ids[i], e)
                    fetched[i] = None
                    continue
                labels = c.labels(i)
                if self.augment is not None:
                    wave = self.augment(c.ids[i], wave, labels)
                fetched[i] = (c.ids[i], wave, labels, True)
        items: list[Item] = []
        for i in idx:
            if i == PADDING_SLOT:
                items.append(dummy_item())
            elif fetched[i] is not None:
                items.append(fetched[i])  # type: ignore[arg-type]
        if not items:
            # Every rank must still run forward/backward this micro-batch (see collate.dummy_item).
            log.warning(
                "micro-batch %s: no utterance decoded; running a silent dummy item instead", [c.ids[i] for i in real]
            )
            items.append(dummy_item())
        return items


def make_loader(
    dataset: UtteranceDataset,
    batches: list[list[int]],
    num_workers: int,
    prefetch: int = 2,
    collate_fn: Callable[[list[Item]], Batch] = collate,
) -> DataLoader:
    """A DataLoader over fixed index lists; it returns batches in this order whatever the worker count."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["prefetch_factor"] = max(2, prefetch)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        # Its own generator: each iter() draws a worker seed, which from the global one would shift dropout's
        # stream whenever a loader starts (a resume starts one where the uninterrupted run did not).
        generator=torch.Generator(),
        **extra,
    )


def prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """``batches`` produced by a background thread of this process, up to ``depth`` ahead, in the same order.

    With --dataloader_num_workers 0: decoding (libsndfile) and torch's ops release the GIL, so the next step's
    batches are read while this one trains, and handing one over is a queue get -- a worker process's hand-over
    (shared-memory tensors through a pipe) cost more than decoding the demo corpus (BENCHMARKS.md, "Training
    speed"). An exception in the thread is raised here, in the consumer, at the batch it would have produced;
    closing this generator stops the thread.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if not _offer(handoff, ("batch", batch), stop):
                    return
            _offer(handoff, ("end", None), stop)
        except BaseException as exc:  # re-raised in the training thread, where it fails the run
            _offer(handoff, ("error", exc), stop)

    thread = threading.Thread(target=produce, name="xlsr_dist-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        # A daemon thread still inside a C++ op (decoding, collate) when the interpreter exits aborts the process
        # ("terminate called without an active exception"): wait for it to finish the batch in hand.
        thread.join(timeout=60)


def _offer(handoff: queue.Queue[tuple[str, Any]], item: tuple[str, Any], stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _describe_skipped(skipped: dict[str, int]) -> str:
    if not skipped:
        return "skipped none"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
    return f"skipped {sum(skipped.values())} ({parts})"


def set_names(locations: list[str]) -> list[str]:
    """Short names of mixed sets for metric keys: the last two parts of each location ('cv-en/train'), characters
    MLflow refuses replaced by '_', and the set's position appended where two would share a name."""
    names = []
    for location in locations:
        tail = "/".join(location.rstrip("/").split("/")[-2:])
        names.append(re.sub(r"[^A-Za-z0-9_\-. /]", "_", tail))
    if len(set(names)) < len(names):
        names = [f"{name}-{i}" for i, name in enumerate(names)]
    return names


def _describe_mixing(locations: list[str], sizes: list[int], probabilities: np.ndarray | None) -> str:
    if probabilities is None:
        return ""
    counts = mixing.set_counts(sizes, probabilities)
    parts = [
        f"{loc} ({n} utterances, p {p:.3f}, {c} per epoch)"
        for loc, n, p, c in zip(locations, sizes, probabilities, counts)
    ]
    return "; mixing " + ", ".join(parts)


class TrainStream:
    """Yields, for each optimizer step, this rank's ``grad_accum`` micro-batches; epochs roll over forever."""

    def __init__(
        self,
        location: str,
        world: World,
        plan: BatchPlan,
        seed: int,
        vocab: dict[str, int],
        data_cfg: DataConfig,
        frames_fn: Callable[[int], int],
        time_masking: TimeMasking | None = None,
    ) -> None:
        if plan.world_size != world.world_size:
            raise ValueError(f"batch plan is for {plan.world_size} ranks but the world has {world.world_size}")
        self.location = str(location)
        self.world = world
        self.plan = plan
        self.seed = int(seed)
        self.bucket_size_multiplier = data_cfg.bucket_size_multiplier
        self.sortagrad_epochs = data_cfg.sortagrad_epochs
        self.num_workers = data_cfg.dataloader_num_workers
        sets = parse_train_sets(self.location)
        self.set_locations = [location for location, _ in sets]
        catalogs = [
            node_catalog.node_shared(world, functools.partial(build_catalog, loc, vocab, data_cfg, frames_fn))
            for loc in self.set_locations
        ]
        self.set_sizes = [len(c) for c in catalogs]
        self.set_names = set_names(self.set_locations)
        for loc, c in zip(self.set_locations, catalogs):
            if len(sets) > 1 and len(c) == 0:
                raise problems.DataProblem(
                    "--train_data", f"--train_data set {loc}: no usable utterance ({_describe_skipped(c.skipped)})"
                )
        # None: one set, the plan of the whole catalog as before mixing existed (same fingerprint, same resume).
        self.probabilities = (
            mixing.set_probabilities(self.set_sizes, [w for _, w in sets], data_cfg.mixing_temperature)
            if len(sets) > 1
            else None
        )
        self.catalog = concatenate(catalogs)
        self.frames_fn, self.time_masking = frames_fn, time_masking
        self.num_samples = len(self.catalog)
        self.report = self.catalog.report
        self.skipped = self.catalog.skipped
        self.steps_per_epoch = self.num_samples // plan.global_batch
        if self.steps_per_epoch == 0:
            raise problems.too_few_to_train(
                self.location,
                self.num_samples,
                self.skipped,
                _describe_skipped(self.skipped),
                plan.global_batch,
                plan.world_size,
            )
        self.fingerprint = self.catalog.fingerprint()
        if self.probabilities is not None:
            # The sets and their probabilities decide the plan too.
            parts = [c.fingerprint() for c in catalogs] + [f"{p:.17g}" for p in self.probabilities]
            self.fingerprint = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        self.dataset = UtteranceDataset(self.catalog)
        # Read before the DataLoader forks, so the workers share the noise and RIR pages.
        self.augmentation = Augmentation.from_config(data_cfg, self.seed)
        self._plan_cache: tuple[int, np.ndarray] | None = None

    def initial_state(self) -> DataState:
        return DataState(STATE_VERSION, self.seed, 0, 0, self.plan.global_batch, self.fingerprint)

    def check(self, state: DataState) -> None:
        """Raise DataStateError unless ``state`` continues this stream (a new world size is fine)."""
        if state.global_batch != self.plan.global_batch:
            raise DataStateError(
                f"the checkpoint's data state is for --global_batch_size {state.global_batch}, this run uses "
                f"{self.plan.global_batch}; resume with --global_batch_size {state.global_batch} or start fresh"
            )
        if state.seed != self.seed:
            raise DataStateError(
                f"the checkpoint's data state was made with --seed {state.seed}, this run uses {self.seed}; "
                f"resume with --seed {state.seed} or start fresh"
            )
        if state.fingerprint != self.fingerprint:
            raise DataStateError(
                f"the training utterances differ from the checkpoint's (fingerprint {state.fingerprint[:12]} "
                f"vs {self.fingerprint[:12]} for {self.location}): shards, --min/max_duration_in_seconds, the "
                f"vocabulary, the model's frame rate, or the sets, weights or --mixing_temperature of --train_data "
                f"changed; resume with the same data or start fresh"
            )

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, global_batch] catalog indices of ``epoch`` (the same on every rank)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            drawn = None
            if self.probabilities is not None:
                drawn = mixing.epoch_draw(self.set_sizes, self.probabilities, self.seed, epoch)
            rows = epoch_batches(
                self.catalog.durations if drawn is None else self.catalog.durations[drawn],
                self.seed,
                epoch,
                self.plan.global_batch,
                self.bucket_size_multiplier,
                shortest_first=epoch < self.sortagrad_epochs,
            )
            self._plan_cache = (epoch, rows if drawn is None else drawn[rows])
        return self._plan_cache[1]

    def seen_per_set(self, epoch: int, step: int) -> list[tuple[int, float]]:
        """(utterances, audio seconds) each set contributes to global batch ``step`` of ``epoch``."""
        rows = self.epoch_plan(epoch)[step]
        which = mixing.set_of(rows, self.set_sizes)
        durations = self.catalog.durations[rows]
        return [(int((which == i).sum()), float(durations[which == i].sum())) for i in range(len(self.set_sizes))]

    def global_batch_ids(self, epoch: int, step: int) -> list[str]:
        return [self.catalog.ids[i] for i in self.epoch_plan(epoch)[step]]

    def dataset_for(self, epoch: int) -> UtteranceDataset:
        """The training items of ``epoch``: augmented as drawn for it when augmentation is on."""
        if self.augmentation is None:
            return self.dataset
        augment = functools.partial(self.augmentation.apply, epoch, frames=self.frames_fn)
        return UtteranceDataset(self.catalog, augment)

    def collate_for(self, epoch: int) -> Callable[[list[Item]], Batch]:
        if self.time_masking is None:
            return collate
        return functools.partial(collate_with_time_masks, masking=self.time_masking, epoch=epoch, frames=self.frames_fn)

    def steps(self, state: DataState) -> Generator[tuple[DataState, list[Batch]], None, None]:
        """(state after the step, its micro-batches) from ``state`` on; every rank yields exactly as many."""
        self.check(state)
        epoch, start = state.epoch, state.step_in_epoch
        spe, ga, rank = self.steps_per_epoch, self.plan.grad_accum, self.world.rank
        while True:
            if start >= spe:
                epoch, start = epoch + start // spe, start % spe
                continue
            rows = self.epoch_plan(epoch)
            micro = [m.tolist() for s in range(start, spe) for m in rank_micro_batches(rows[s], rank, self.plan)]
            batches = iter(make_loader(self.dataset_for(epoch), micro, self.num_workers, ga, self.collate_for(epoch)))
            if self.num_workers == 0:
                batches = prefetched(batches, depth=ga)
            for step in range(start, spe):
                out = [next(batches) for _ in range(ga)]
                if self.probabilities is not None:
                    # The global batch's share of each set: the same on every rank, so no collective to sum it.
                    out[0]["set_seen"] = dict(zip(self.set_names, self.seen_per_set(epoch, step)))
                after = (epoch, step + 1) if step + 1 < spe else (epoch + 1, 0)
                yield (
                    DataState(STATE_VERSION, self.seed, after[0], after[1], self.plan.global_batch, self.fingerprint),
                    out,
                )
            del batches  # shuts this epoch's workers down before the next epoch starts its own
            epoch, start = epoch + 1, 0

    def describe(self) -> str:
        p = self.plan
        dropped = self.num_samples - self.steps_per_epoch * p.global_batch
        return (
            f"train: {self.num_samples} utterances ({self.catalog.hours():.2f} h) from "
            f"{len(self.catalog.shard_paths)} shard(s); {self.steps_per_epoch} steps/epoch of "
            f"{p.global_batch} = {p.world_size} rank(s) x {p.micro_batch} x {p.grad_accum} accumulation"
            f"{f', {dropped} left out per epoch (a different few each epoch)' if dropped else ''}; "
            f"{_describe_skipped(self.skipped)}"
            f"{_describe_mixing(self.set_locations, self.set_sizes, self.probabilities)}"
            f"{'; ' + self.augmentation.describe() if self.augmentation else ''}"
        )


class EvalStream:
    """The eval set split over ranks: sorted by duration, every utterance once, the same batch count per rank."""

    def __init__(
        self,
        location: str,
        world: World,
        batch_size: int,
        vocab: dict[str, int],
        data_cfg: DataConfig,
        frames_fn: Callable[[int], int],
        max_utterances: int = 0,
    ) -> None:
        self.location = str(location)
        self.world = world
        self.batch_size = batch_size
        self.num_workers = data_cfg.dataloader_num_workers
        catalog = node_catalog.node_shared(world, lambda: build_catalog(self.location, vocab, data_cfg, frames_fn))
        if max_utterances and max_utterances < len(catalog):
            # The first N in id order: the same subset on every rank and for any sharding.
            catalog = catalog.head(max_utterances)
        if len(catalog) == 0:
            raise problems.nothing_to_evaluate(self.location, catalog.skipped, _describe_skipped(catalog.skipped))
        self.catalog = catalog
        self.num_samples = len(catalog)
        self.report = catalog.report
        self.skipped = catalog.skipped
        self.batches = eval_rank_batches(catalog.durations, world.world_size, world.rank, batch_size)
        self.dataset = UtteranceDataset(catalog)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(make_loader(self.dataset, [b.tolist() for b in self.batches], self.num_workers))

    def describe(self) -> str:
        return (
            f"eval: {self.num_samples} utterances ({self.catalog.hours():.2f} h), {len(self.batches)} "
            f"batch(es) of up to {self.batch_size} per rank; {_describe_skipped(self.skipped)}"
        )
